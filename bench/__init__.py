"""The benchmarks, each run as `python -m bench.NAME` (`--help` for its options).

ingest        events/s a daemon stores over UDP, TCP or acked TCP, its latency and memory
track         the cost of `Tracker.track()`, and what a daemon stores of a tracking process
queries       query latency on a large dataset while ingestion goes on
writer        the writer's insert strategies, alone and next to a busy Python thread
schema_cost   what a schema change costs the writer, on a copy of a large database
dataset       not a measure: builds the large database that queries and schema_cost use

Shared by them: common (the daemon, what to watch of it, the machine). Parts of ingest:
payloads (pre-encoded events), senders (the send loop of each mode), load (sender processes).
"""
