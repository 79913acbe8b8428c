"""Socket activation: sockets bound by the test and passed as systemd passes them."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_helpers import ActivatedDaemon, bound_udp, listening_tcp

from collector.activation import ActivationError, assign_role, listen_fds
from collector.config import Address
from collector.testing import DaemonProcess, QueryClient, TcpClient, count_rows, send_udp


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made = [bound_udp(), listening_tcp(), listening_tcp()]
    yield made
    for sock in made:
        sock.close()


def address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def test_listen_fds_only_for_this_process_and_variables_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "udp:tcp:query"}
    assert listen_fds(env) == []
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "udp:query"}
    assert listen_fds(env) == [(3, "udp"), (4, "query")]
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    assert listen_fds(env) == [(3, "unknown"), (4, "unknown")]
    with pytest.raises(ActivationError, match="names 1 sockets, not 2"):
        listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "udp"})


def test_roles_by_name_then_by_type(sockets: list[socket.socket]) -> None:
    udp, tcp, query = sockets
    taken: dict[str, socket.socket] = {}
    assert assign_role(query, "query", taken) == "query"
    taken["query"] = query
    assert assign_role(udp, "collector.socket", taken) == "udp"
    assert assign_role(tcp, "unknown", taken) == "tcp"
    with pytest.raises(ActivationError, match="must be a datagram socket"):
        assign_role(tcp, "udp", {})
    with pytest.raises(ActivationError, match="two sockets are named 'query'"):
        assign_role(tcp, "query", taken)
    idle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with idle, pytest.raises(ActivationError, match="is not listening"):
        assign_role(idle, "tcp", {})


async def test_daemon_serves_on_the_passed_sockets(
    db_path: Path, sockets: list[socket.socket]
) -> None:
    udp, tcp, query = sockets
    daemon = ActivatedDaemon(db_path, sockets, ["udp", "tcp", "query"]).start()
    assert (daemon.udp, daemon.tcp, daemon.query) == tuple(map(address, sockets))
    send_udp(address(udp), {"action": "by-udp"})
    client = await TcpClient.connect(address(tcp))
    await client.send({"events": [{"action": "by-tcp"}], "ack": "one"})
    assert (await client.reply())["stored"] == 1
    await client.close()
    queries = await QueryClient.connect(address(query))
    await queries.send("FORMAT json")
    await queries.reply()
    _rows, status = await queries.ask("COUNT action=by-udp")
    assert status.startswith("OK"), status
    await queries.close()
    assert daemon.stop() == 0
    assert count_rows(db_path) == 2
    # Closed by the daemon, never shut down: the sockets still work for the next one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"still open", address(udp))
    udp.settimeout(5)
    assert udp.recv(100) == b"still open"
    with socket.create_connection(address(tcp), timeout=5):
        pass  # waits in the backlog of a listening socket


def test_unnamed_udp_socket_by_type_and_the_rest_bound(
    db_path: Path, sockets: list[socket.socket]
) -> None:
    udp = sockets[0]
    daemon = ActivatedDaemon(db_path, [udp], None).start()
    assert daemon.udp == address(udp)
    assert daemon.tcp is not None and daemon.tcp.port not in (0, address(udp).port)
    passed = daemon.wait_for_log(lambda r: r.get("event") == "socket passed by the service "
                                 "manager")  # fmt: skip
    assert (passed["role"], passed["fd"], passed["name"]) == ("udp", 3, "unknown")
    assert daemon.stop() == 0


def test_a_socket_of_the_wrong_type_stops_start_up(
    db_path: Path, sockets: list[socket.socket]
) -> None:
    daemon = ActivatedDaemon(db_path, [sockets[1]], ["udp"])
    daemon.launch()
    assert daemon.wait(timeout=20) == 1
    errors = [r for r in daemon.log_records() if r.get("level") == "error"]
    assert errors[0]["event"] == "cannot use the sockets passed by the service manager"
    assert errors[0]["error"] == "socket 'udp' must be a datagram socket"


def test_listen_pid_of_another_process_is_ignored(db_path: Path) -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "udp:tcp:query"}
    daemon = DaemonProcess(db_path, env=env).start()
    assert daemon.udp is not None and daemon.udp.port != 0
    assert not [r for r in daemon.log_records() if r.get("logger") == "collector.activation"]
    assert daemon.stop() == 0
