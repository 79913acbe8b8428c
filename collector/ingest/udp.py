"""UDP ingest: one msgpack object per datagram, never a reply to events.

A datagram of zero or one byte is a Fluentd forward heartbeat, answered with one byte 0x00.
A forward request (an array whose first element is a str) is quarantined whole: Fluentd's
forward protocol carries events over TCP only.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog

from collector.clock import now_ms
from collector.codec import UNPACK_ERRORS, Decoded, Rejection, decode_object, unpack_datagram
from collector.events import normalise
from collector.forward.request import is_forward_request
from collector.ingest.core import Ingest, format_peer, objects_in

log = structlog.get_logger("collector.udp")

HEARTBEAT_MAX_BYTES = 1
HEARTBEAT_REPLY = b"\x00"
FORWARD_OVER_UDP = "Fluentd forward requests need TCP"


class UdpIngestProtocol(asyncio.DatagramProtocol):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ingest = self.ingest
        stats = ingest.stats
        stats.datagrams_received += 1
        if len(data) <= HEARTBEAT_MAX_BYTES:
            self._answer_heartbeat(addr)
            return
        try:
            obj = unpack_datagram(data)
        except UNPACK_ERRORS as exc:
            if ingest.buffer.full():
                stats.decode_errors += 1
                stats.datagrams_dropped += 1
                return
            ingest.quarantine_undecodable(
                str(exc) or type(exc).__name__, data, format_peer("udp", addr)
            )
            return
        if ingest.buffer.full():
            stats.datagrams_dropped += 1
            stats.events_dropped += objects_in(obj)
            return
        received_at = now_ms()
        if type(obj) is dict and "events" not in obj:
            try:
                row = normalise(obj, received_at, ingest.limits)
            except Exception:  # the general path below quarantines it with the reason
                pass
            else:
                ingest.accept_row(row, len(data))
                return
        if is_forward_request(obj):
            decoded = Decoded([], [Rejection(FORWARD_OVER_UDP, data)])
        else:
            decoded = decode_object(obj, data, received_at, ingest.limits)
        ingest.accept(decoded, len(data), lambda: format_peer("udp", addr), received_at)

    def _answer_heartbeat(self, addr: Any) -> None:
        self.ingest.stats.udp_heartbeats += 1
        if self.transport is not None:
            self.transport.sendto(HEARTBEAT_REPLY, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("udp socket error", error=str(exc))
