"""Fluentd's Forward Protocol v1 on the TCP ingest port. Pure: no sockets, no clock.

- `settings`: the mapping and limits, built from the configuration.
- `request`: tell a forward request from a native object, decode its four modes.
- `entries`: one `[time, record]` entry -> one event row (or its quarantine record).
- `handshake`: the optional shared-key HELO / PING / PONG exchange.
- `stream`: what a TCP connection needs around them (the lenient decoder, ack replies).

See docs/fluentd.md.
"""
