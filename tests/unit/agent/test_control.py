"""The control protocol over a real unix socket in a temp dir: requests, errors, bounds, the client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vpnlab_agent import control
from vpnlab_agent.control import ControlError, ControlServer, ControlUnreachable, parse_request


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"command": "status"}', ("status", {})),
        (b'{"command": "summary"}', ("summary", {})),
        (b'{"command": "rekey", "peer": "hub"}', ("rekey", {"peer": "hub", "what": "child"})),
        (b'{"command": "rekey", "peer": "hub", "what": "ike"}', ("rekey", {"peer": "hub", "what": "ike"})),
        (b'{"command": "terminate", "peer": "br1"}', ("terminate", {"peer": "br1"})),
        (b'{"command": "retag", "peer": "hub", "context": "corp", "tag": 77}',
         ("retag", {"peer": "hub", "context": "corp", "tag": 77})),
    ],
)
def test_parse_good_requests(line: bytes, expected: tuple[str, dict[str, Any]]) -> None:
    assert parse_request(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"command": "reboot"}', "unknown command 'reboot'"),
        (b'{"command": "initiate"}', "needs a peer name"),
        (b'{"command": "rekey", "peer": "hub", "what": "all"}', "'child' or 'ike'"),
        (b"\xff\xfe", "not JSON"),
        (b'{"command": "retag", "peer": "hub", "tag": 2}', "needs a context name"),
        (b'{"command": "retag", "peer": "hub", "context": "corp", "tag": 70000}', "tag must be an integer 0-65535"),
        (b'{"command": "retag", "peer": "hub", "context": "corp", "tag": true}', "tag must be an integer"),
    ],
)
def test_parse_bad_requests(line: bytes, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        parse_request(line)


class Served:
    """A ControlServer on its own event loop thread, answering with `handler`."""

    def __init__(self, path: str, handler: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, handler)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "run" / "agent.sock")


@pytest.fixture
def served(sock_path: str) -> Iterator[Served]:
    async def handler(command: str, args: dict[str, Any]) -> Any:
        if command == "status":
            return {"node": "br1", "ready": True}
        if args["peer"] == "slow":
            await asyncio.sleep(60)
        if args["peer"] == "bug":
            raise KeyError("oops")
        if args["peer"] != "hub":
            raise ControlError(f"unknown peer {args['peer']!r}")
        return {"peer": args["peer"], "what": args.get("what")}

    s = Served(sock_path, handler)
    yield s
    s.close()


def test_status_and_rekey_round_trip(served: Served, sock_path: str) -> None:
    assert control.request(sock_path, "status") == {"node": "br1", "ready": True}
    assert control.request(sock_path, "rekey", peer="hub", what="ike") == {"peer": "hub", "what": "ike"}
    with pytest.raises(ControlError, match="unknown peer 'nope'"):
        control.request(sock_path, "initiate", peer="nope")


def test_socket_is_owner_only(served: Served, sock_path: str) -> None:
    mode = os.stat(sock_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o700


def test_a_bug_in_a_handler_is_an_error_answer_not_a_dead_socket(served: Served, sock_path: str) -> None:
    with pytest.raises(ControlError, match="KeyError"):
        control.request(sock_path, "terminate", peer="bug")
    assert control.request(sock_path, "status")["ready"] is True


def test_several_requests_on_one_connection(served: Served, sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b'{"command": "status"}\n{"command": "bogus"}\n')
        data = b""
        while data.count(b"\n") < 2:
            data += s.recv(4096)
    first, second = (json.loads(line) for line in data.splitlines())
    assert first == {"ok": True, "result": {"node": "br1", "ready": True}}
    assert second["ok"] is False and "unknown command" in second["error"]


def test_oversized_request_is_refused(served: Served, sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(sock_path)
        try:
            s.sendall(b"x" * (control.MAX_REQUEST_BYTES + 10) + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = s.recv(4096)
    answer = json.loads(data.splitlines()[0])
    assert answer["ok"] is False and "longer than" in answer["error"]


def test_slow_handler_times_out(served: Served, sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "HANDLER_TIMEOUT_S", 0.2)
    with pytest.raises(ControlError, match="no answer within 0.2 s"):
        control.request(sock_path, "initiate", peer="slow")


def test_unreachable_agent(tmp_path: Path) -> None:
    with pytest.raises(ControlUnreachable, match="no one listens"):
        control.request(str(tmp_path / "nothing.sock"), "status")


def test_stale_socket_file_is_replaced(sock_path: str) -> None:
    os.makedirs(os.path.dirname(sock_path), exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens

    async def handler(command: str, args: dict[str, Any]) -> Any:
        return "fresh"

    s = Served(sock_path, handler)
    try:
        assert control.request(sock_path, "status") == "fresh"
    finally:
        s.close()
    assert not os.path.exists(sock_path)


def test_ctl_command_line(served: Served, sock_path: str, tmp_path: Path) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vpnlab_agent", "ctl", "--socket", sock_path, *args],
                              capture_output=True, text=True, timeout=30)

    ok = ctl("status")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"node": "br1", "ready": True}
    rekey = ctl("rekey", "hub", "--ike")
    assert rekey.returncode == 0 and json.loads(rekey.stdout) == {"peer": "hub", "what": "ike"}
    refused = ctl("initiate", "nope")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == "vpnlab-agent: unknown peer 'nope'"
    gone = subprocess.run([sys.executable, "-m", "vpnlab_agent", "ctl", "--socket", str(tmp_path / "x.sock"),
                           "status"], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1
    assert "agent not reachable" in gone.stderr


@pytest.mark.parametrize("answer", [b"[1, 2]\n", b"\"ok\"\n", b"null\n"])
def test_an_answer_that_is_not_an_object_is_a_control_error(tmp_path: Path, answer: bytes) -> None:
    path = str(tmp_path / "odd.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def reply() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(answer)

    thread = threading.Thread(target=reply, daemon=True)
    thread.start()
    try:
        with pytest.raises(ControlError, match="not a response object"):
            control.request(path, "status", timeout=5)
    finally:
        thread.join(5)
        srv.close()
