"""The agent's control socket: one JSON request per line in, one JSON response line out.

Request:  {"command": "status"} | {"command": "summary"} | {"command": "rekey", "peer": "br1", "what": "child"|"ike"}
          | {"command": "initiate", "peer": "hub"} | {"command": "terminate", "peer": "hub"}
          | {"command": "retag", "peer": "hub", "context": "corp", "tag": 2} (fault injection, hsvpn)
Response: {"ok": true, "result": ...} | {"ok": false, "error": "one line"}

Unix stream socket, mode 0600 (root only: whoever can talk to it can tear tunnels down). Every
request is bounded in size, in time to arrive and in time to answer; clients are bounded in number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("vpnlab_agent.control")

MAX_REQUEST_BYTES = 64 * 1024
READ_TIMEOUT_S = 5.0
HANDLER_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = HANDLER_TIMEOUT_S + 5.0
MAX_CLIENTS = 16
MAX_REQUESTS_PER_CONNECTION = 64

COMMANDS = ("status", "summary", "rekey", "initiate", "terminate", "retag")
NO_PEER = ("status", "summary")

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A control request failed (bad request, unknown peer, the service refused); one line."""


class ControlUnreachable(ControlError):
    """No agent answers on the control socket."""


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request line; ControlError with a one-line reason when it is not acceptable."""
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ControlError("request is not JSON") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    command = request.pop("command", None)
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})")
    if command not in NO_PEER:
        peer = request.get("peer")
        if not isinstance(peer, str) or not peer:
            raise ControlError(f"{command}: needs a peer name")
    if command == "rekey":
        what = request.setdefault("what", "child")
        if what not in ("child", "ike"):
            raise ControlError(f"rekey: what must be 'child' or 'ike', not {what!r}")
    if command == "retag":
        tag, context = request.get("tag"), request.get("context")
        if not isinstance(context, str) or not context:
            raise ControlError("retag: needs a context name")
        if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag <= 0xFFFF:
            raise ControlError(f"retag: tag must be an integer 0-65535, not {tag!r}")
    return command, request


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode() + b"\n"


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._clients = asyncio.Semaphore(MAX_CLIENTS)

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a previous run
        old = os.umask(0o177)  # the socket is created 0600, no window where it is wider
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=self.path, limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(OSError):  # gone already, or never created
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients.locked():
            writer.write(encode({"ok": False, "error": "too many control clients"}))
            await _close(writer)
            return
        async with self._clients:
            try:
                for _ in range(MAX_REQUESTS_PER_CONNECTION):
                    try:
                        line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT_S)
                    except asyncio.IncompleteReadError:
                        return  # client closed
                    except asyncio.LimitOverrunError:
                        writer.write(encode({"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}))
                        return
                    except asyncio.TimeoutError:
                        return
                    writer.write(encode(await self._answer(line)))
                    await writer.drain()
            except (ConnectionError, ValueError):
                return
            finally:
                await _close(writer)

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            command, args = parse_request(line)
            result = await asyncio.wait_for(self.handler(command, args), HANDLER_TIMEOUT_S)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no answer within {HANDLER_TIMEOUT_S:g} s"}
        except Exception as exc:  # a bug in a service must not take the control socket down
            log.exception("control request failed")
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def request(path: str, command: str, timeout: float = CLIENT_TIMEOUT_S, **args: Any) -> Any:
    """Send one request to the agent at `path` and return its result (blocking client for `ctl`)."""
    payload = encode({"command": command, **args})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(payload)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 16 * 1024 * 1024:
                    raise ControlError("response too large")
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlUnreachable(f"agent not reachable: no one listens on {path}") from None
    except socket.timeout:
        raise ControlUnreachable(f"agent not reachable: no answer on {path} within {timeout:g} s") from None
    except OSError as exc:
        raise ControlUnreachable(f"agent not reachable on {path}: {exc.strerror or exc}") from None
    if not buf:
        raise ControlUnreachable(f"agent on {path} closed the connection without an answer")
    try:
        response = json.loads(buf)
    except ValueError:
        raise ControlError("agent sent a response that is not JSON") from None
    if not isinstance(response, dict):
        raise ControlError(f"agent sent a {type(response).__name__}, not a response object")
    if not response.get("ok"):
        raise ControlError(str(response.get("error", "request failed")))
    return response.get("result")
