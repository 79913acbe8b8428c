"""TCP ingest against an in-process daemon: streams, acks, bad input, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack

from collector.testing import TcpClient, count_rows, running_daemon, wait_until


def events(count: int, action: str = "tap") -> list[dict[str, object]]:
    return [{"action": action, "user_id": i, "value": i} for i in range(count)]


async def test_stream_of_back_to_back_objects(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(*events(30), events(70), *events(20))
        await wait_until(lambda: daemon.stats.events_stored == 120)
        assert daemon.stats.tcp_objects_received == 51
        await client.close()
    assert count_rows(db_path) == 120


async def test_ack_arrives_only_after_rows_are_in_the_file(db_path: Path) -> None:
    async with running_daemon(db_path, batch_max_age_ms=200.0) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        for round_number in range(3):
            await client.send({"events": events(100), "ack": f"batch-{round_number}"})
            reply = await client.reply()
            # Read through a separate connection the moment the ack arrives.
            assert count_rows(db_path) == 100 * (round_number + 1)
            assert reply == {"ack": f"batch-{round_number}", "stored": 100, "rejected": 0}
        await client.close()


async def test_acks_come_in_batch_order_with_exact_counts(db_path: Path) -> None:
    async with running_daemon(db_path, batch_size=7) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        tokens = [f"t{i}".encode() for i in range(20)]
        await client.send(*({"events": events(i % 5), "ack": t} for i, t in enumerate(tokens)))
        replies = [await client.reply() for _ in tokens]
        assert [r["ack"] for r in replies] == tokens
        assert [r["stored"] for r in replies] == [i % 5 for i in range(20)]
        await client.close()


async def test_mixed_valid_and_invalid_events_in_an_acked_batch(db_path: Path) -> None:
    batch = [*events(3), {"action": 7}, {"value": "no action"}, *events(2), [1, 2]]
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": batch, "ack": "mixed"})
        assert await client.reply() == {"ack": "mixed", "stored": 5, "rejected": 3}
        await client.close()
    assert count_rows(db_path) == 5
    assert count_rows(db_path, "quarantine") == 3
    assert count_rows(db_path, "quarantine", "source LIKE 'tcp:127.0.0.1:%'") == 3


async def test_duplicates_are_acknowledged_and_stored_once(db_path: Path) -> None:
    batch = [{"action": "buy", "id": f"order-{i}"} for i in range(10)]
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": batch, "ack": "first"})
        assert await client.reply() == {"ack": "first", "stored": 10, "rejected": 0}
        await client.send({"events": [*batch[5:], {"action": "buy", "id": "new"}], "ack": "retry"})
        reply = await client.reply()
        assert reply == {"ack": "retry", "stored": 1, "rejected": 0, "duplicates": 5}
        await client.close()
        assert daemon.stats.events_duplicate == 5
    assert count_rows(db_path) == 11


async def test_corrupt_stream_closes_the_connection_and_keeps_what_came_before(
    db_path: Path,
) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": events(4), "ack": "before"}, b"\xc1\xc1\xc1")
        assert await client.reply() == {"ack": "before", "stored": 4, "rejected": 0}
        assert await client.closed_by_peer()
        assert daemon.stats.decode_errors == 1
        assert daemon.stats.tcp_connections_closed_on_error == 1

        other = await TcpClient.connect(daemon.tcp)
        await other.send({"events": events(2), "ack": "after"})
        assert await other.reply() == {"ack": "after", "stored": 2, "rejected": 0}
        await other.close()
    assert count_rows(db_path) == 6


async def test_incomplete_trailing_bytes_are_counted_at_close(db_path: Path) -> None:
    whole = msgpack.packb(events(5))
    partial = msgpack.packb({"action": "cut", "value": "x" * 50})[:20]
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send(whole, partial)
        client.writer.write_eof()
        assert await client.closed_by_peer()
        await wait_until(lambda: daemon.stats.events_stored == 5)
        assert daemon.stats.tcp_truncated_bytes == 20
        await client.close()


async def test_envelope_with_bad_token_is_quarantined_and_connection_lives(
    db_path: Path,
) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": events(2), "ack": "x" * 65})
        await client.send({"events": events(3), "ack": "good"})
        assert await client.reply() == {"ack": "good", "stored": 3, "rejected": 0}
        await client.close()
    assert count_rows(db_path) == 3
    assert count_rows(db_path, "quarantine", "reason LIKE 'ack token is 65 bytes%'") == 1


async def test_object_larger_than_the_connection_buffer_closes_it(db_path: Path) -> None:
    async with running_daemon(db_path, tcp_max_buffer_bytes=4096) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"action": "big", "value": "v" * 10_000})
        assert await client.closed_by_peer()
        assert daemon.stats.decode_errors == 1
        assert daemon.stats.events_stored == 0


async def test_connections_over_the_limit_are_refused(db_path: Path) -> None:
    async with running_daemon(db_path, tcp_max_connections=2) as daemon:
        first = await TcpClient.connect(daemon.tcp)
        second = await TcpClient.connect(daemon.tcp)
        await wait_until(lambda: daemon.stats.tcp_connections_open == 2)
        third = await TcpClient.connect(daemon.tcp)
        assert await third.closed_by_peer()
        assert daemon.stats.tcp_connections_refused == 1
        await first.send({"events": events(1), "ack": "still-served"})
        assert (await first.reply())["stored"] == 1
        for client in (first, second, third):
            await client.close()


async def test_idle_connection_is_closed(db_path: Path) -> None:
    async with running_daemon(db_path, tcp_idle_timeout=0.2) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        assert await client.closed_by_peer()
        assert daemon.stats.tcp_idle_closed == 1
        await client.close()


async def test_stop_sends_pending_acks_before_closing(db_path: Path) -> None:
    async with running_daemon(
        db_path, batch_max_age_ms=60_000.0, batch_size=100_000, eager_ack_commit=False
    ) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": events(25), "ack": "at-stop"})
        await wait_until(lambda: daemon.stats.events_received == 25)
        assert count_rows(db_path) == 0
        stopping = asyncio.create_task(daemon.stop())
        assert await client.reply() == {"ack": "at-stop", "stored": 25, "rejected": 0}
        await stopping
        await client.close()
    assert count_rows(db_path) == 25


async def test_malformed_envelope_with_a_usable_token_is_acknowledged_as_rejected(
    db_path: Path,
) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": events(4), "ack": "odd", "priority": "high"})
        assert await client.reply() == {"ack": "odd", "stored": 0, "rejected": 4}
        await client.close()
    assert count_rows(db_path, "quarantine", "reason LIKE 'unexpected key(s)%'") == 1


async def test_eager_ack_commit_does_not_wait_for_the_batch_age(db_path: Path) -> None:
    # An hour-long age and a huge batch size: only the eager commit can answer in time.
    async with running_daemon(db_path, batch_max_age_ms=3_600_000.0, batch_size=100_000) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        for n in range(3):
            await client.send({"events": events(10), "ack": f"e{n}"})
            assert await client.reply() == {"ack": f"e{n}", "stored": 10, "rejected": 0}
        await client.close()


async def test_half_close_after_corrupt_bytes_counts_one_error(db_path: Path) -> None:
    async with running_daemon(db_path) as daemon:
        client = await TcpClient.connect(daemon.tcp)
        await client.send({"events": events(2), "ack": "ok"}, b"\xc1" * 10)
        client.writer.write_eof()
        assert await client.reply() == {"ack": "ok", "stored": 2, "rejected": 0}
        assert await client.closed_by_peer()
        assert daemon.stats.decode_errors == 1
        assert daemon.stats.tcp_truncated_bytes == 0
        await client.close()
