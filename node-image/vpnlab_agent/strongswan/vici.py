"""A small stdlib client for strongSwan's VICI protocol (the socket swanctl itself talks to).

Framing: 4-byte big-endian length, then a packet type byte. Requests carry a command name and a
message; a streamed command (list-sas) sends its results as events before the final response.
Message encoding: sections, key/values and lists, each element a type byte plus length-prefixed
name/value. Every read is bounded in size and time.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN = 0, 1, 2
EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN, EVENT = 3, 4, 5, 6, 7
SECTION_START, SECTION_END, KEY_VALUE, LIST_START, LIST_ITEM, LIST_END = 1, 2, 3, 4, 5, 6

MAX_PACKET = 1 << 20  # charon's own limit is 512 KiB
MAX_EVENTS = 10_000

Message = dict[str, Any]  # values: str, list[str] or nested Message


class ViciError(Exception):
    """VICI transport or protocol failure, or a command charon answered with success=no."""


def encode_message(msg: Message) -> bytes:
    out = bytearray()
    for key, value in msg.items():
        name = key.encode()
        if len(name) > 255:
            raise ViciError(f"key {key!r} too long")
        if isinstance(value, dict):
            out += bytes([SECTION_START, len(name)]) + name + encode_message(value) + bytes([SECTION_END])
        elif isinstance(value, (list, tuple)):
            out += bytes([LIST_START, len(name)]) + name
            for item in value:
                data = _value(item)
                out += bytes([LIST_ITEM]) + struct.pack("!H", len(data)) + data
            out += bytes([LIST_END])
        else:
            data = _value(value)
            out += bytes([KEY_VALUE, len(name)]) + name + struct.pack("!H", len(data)) + data
    return bytes(out)


def _value(value: Any) -> bytes:
    if isinstance(value, bool):
        data = b"yes" if value else b"no"
    elif isinstance(value, bytes):
        data = value
    else:
        data = str(value).encode()
    if len(data) > 0xFFFF:
        raise ViciError("value too long")
    return data


def decode_message(data: bytes) -> Message:
    root: Message = {}
    stack: list[Message] = [root]
    current_list: list[str] | None = None
    pos = 0
    n = len(data)

    def take(count: int) -> bytes:
        nonlocal pos
        if pos + count > n:
            raise ViciError("truncated VICI message")
        chunk = data[pos:pos + count]
        pos += count
        return chunk

    def name() -> str:
        return take(take(1)[0]).decode(errors="replace")

    def value() -> str:
        (length,) = struct.unpack("!H", take(2))
        return take(length).decode(errors="replace")

    while pos < n:
        kind = take(1)[0]
        if kind == SECTION_START:
            section: Message = {}
            stack[-1][name()] = section
            stack.append(section)
        elif kind == SECTION_END:
            if len(stack) == 1:
                raise ViciError("unbalanced section end")
            stack.pop()
        elif kind == KEY_VALUE:
            key = name()
            stack[-1][key] = value()
        elif kind == LIST_START:
            current_list = []
            stack[-1][name()] = current_list
        elif kind == LIST_ITEM:
            if current_list is None:
                raise ViciError("list item outside a list")
            current_list.append(value())
        elif kind == LIST_END:
            current_list = None
        else:
            raise ViciError(f"unknown VICI element type {kind}")
    if len(stack) != 1:
        raise ViciError("unterminated section")
    return root


class Vici:
    """One connection to charon's VICI socket; use as a context manager."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def __enter__(self) -> Vici:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ViciError(f"cannot reach charon on {self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, payload: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(struct.pack("!I", len(payload)) + payload)

    def _recv_exact(self, count: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < count:
            try:
                chunk = self._sock.recv(count - len(buf))
            except socket.timeout:
                raise ViciError(f"charon did not answer within {self.timeout:g} s") from None
            if not chunk:
                raise ViciError("charon closed the VICI connection")
            buf += chunk
        return bytes(buf)

    def _recv(self) -> tuple[int, bytes]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        if length == 0 or length > MAX_PACKET:
            raise ViciError(f"bad VICI packet length {length}")
        packet = self._recv_exact(length)
        return packet[0], packet[1:]

    def _named(self, kind: int, name: str, msg: Message | None = None) -> None:
        raw = name.encode()
        self._send(bytes([kind, len(raw)]) + raw + (encode_message(msg) if msg else b""))

    def request(self, command: str, msg: Message | None = None) -> Message:
        self._named(CMD_REQUEST, command, msg)
        kind, body = self._recv()
        if kind == CMD_UNKNOWN:
            raise ViciError(f"charon does not know the command {command!r}")
        if kind != CMD_RESPONSE:
            raise ViciError(f"unexpected VICI packet type {kind} answering {command}")
        return decode_message(body)

    def streamed(self, command: str, event: str, msg: Message | None = None) -> tuple[list[Message], Message]:
        """Run a command that streams its results as `event` events; return (events, response)."""
        self._named(EVENT_REGISTER, event)
        kind, _ = self._recv()
        if kind != EVENT_CONFIRM:
            raise ViciError(f"charon refused to stream {event!r} events")
        self._named(CMD_REQUEST, command, msg)
        events: list[Message] = []
        while True:
            kind, body = self._recv()
            if kind == EVENT:
                if not body or len(body) < 1 + body[0]:
                    raise ViciError(f"truncated {event} event")
                nlen = body[0]
                if len(events) >= MAX_EVENTS:
                    raise ViciError(f"more than {MAX_EVENTS} {event} events")
                events.append(decode_message(body[1 + nlen:]))
            elif kind == CMD_RESPONSE:
                response = decode_message(body)
                break
            elif kind == CMD_UNKNOWN:
                raise ViciError(f"charon does not know the command {command!r}")
            else:
                raise ViciError(f"unexpected VICI packet type {kind} during {command}")
        self._named(EVENT_UNREGISTER, event)
        self._recv()  # its confirm
        return events, response

    def checked(self, command: str, msg: Message | None = None) -> Message:
        """request() that turns success=no into ViciError with charon's errmsg."""
        response = self.request(command, msg)
        if response.get("success", "yes") != "yes":
            raise ViciError(f"{command}: {response.get('errmsg', 'failed')}")
        return response
