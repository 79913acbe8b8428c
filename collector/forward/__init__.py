"""Fluentd's Forward Protocol v1 on the TCP ingest port. Pure: no sockets, no clock.

- `settings`: the mapping and limits, built from the configuration.
- `request`: tell a forward request from a native object, decode its four modes.
- `packed`: PackedForward entries, measured before any is built, then built one at a time.
- `entries`: one `[time, record]` entry -> one event row (or its quarantine record).
- `handshake`: the optional shared-key HELO / PING / PONG exchange.
- `stream`: what a TCP connection needs around them (its decoder and byte accounting, acks).

See docs/fluentd.md.
"""
