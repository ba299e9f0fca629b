"""VICI message codec, framing of streamed commands, and list-sas -> status conversion.

The wire bytes below are built by hand from the protocol description (strongSwan's
src/libcharon/plugins/vici/README.md), not by our encoder, so codec bugs cannot cancel out.
The real charon is exercised by tests/e2e/test_strongswan_agent_mode.py.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from vpnlab_agent.strongswan.service import parse_list_sas
from vpnlab_agent.strongswan.vici import Vici, ViciError, decode_message, encode_message

# {"key": "value", "sec": {"k2": "v2", "lst": ["a", "bc"]}}
WIRE = (
    b"\x03\x03key\x00\x05value"
    b"\x01\x03sec"
    b"\x03\x02k2\x00\x02v2"
    b"\x04\x03lst\x05\x00\x01a\x05\x00\x02bc\x06"
    b"\x02"
)
MESSAGE = {"key": "value", "sec": {"k2": "v2", "lst": ["a", "bc"]}}


def test_encode_matches_the_protocol() -> None:
    assert encode_message(MESSAGE) == WIRE


def test_decode_matches_the_protocol() -> None:
    assert decode_message(WIRE) == MESSAGE


def test_values_are_stringified() -> None:
    assert decode_message(encode_message({"n": 5, "b": True, "raw": b"\x00\x01"})) == {
        "n": "5", "b": "yes", "raw": "\x00\x01"
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (WIRE[:-1], "unterminated section"),
        (b"\x02", "unbalanced"),
        (b"\x03\x03key\x00\x09val", "truncated"),
        (b"\x05\x00\x01a", "list item outside a list"),
        (b"\x09", "unknown VICI element type 9"),
    ],
)
def test_decode_rejects_broken_messages(data: bytes, message: str) -> None:
    with pytest.raises(ViciError, match=message):
        decode_message(data)


def _packet(kind: int, body: bytes = b"", name: str | None = None) -> bytes:
    payload = bytes([kind]) + ((bytes([len(name)]) + name.encode()) if name is not None else b"") + body
    return struct.pack("!I", len(payload)) + payload


def _serve_once(path: str, script: list[tuple[bytes, bytes]], seen: list[bytes]) -> threading.Thread:
    """A scripted peer: for each (expected packet, reply bytes), read one packet, record it, reply."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            for _expected, reply in script:
                (length,) = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))
                seen.append(conn.recv(length, socket.MSG_WAITALL))
                conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_streamed_command_framing(tmp_path: Path) -> None:
    path = str(tmp_path / "vici")
    event = encode_message({"hub": {"state": "ESTABLISHED"}})
    script = [
        (b"register", _packet(5)),  # EVENT_CONFIRM
        (b"list-sas", _packet(7, event, "list-sa") + _packet(7, event, "list-sa") + _packet(1)),
        (b"unregister", _packet(5)),
    ]
    seen: list[bytes] = []
    thread = _serve_once(path, script, seen)
    with Vici(path, timeout=5) as vici:
        events, response = vici.streamed("list-sas", "list-sa")
    thread.join(5)
    assert events == [{"hub": {"state": "ESTABLISHED"}}] * 2 and response == {}
    assert seen == [b"\x03\x07list-sa", b"\x00\x08list-sas", b"\x04\x07list-sa"]


def test_checked_request_raises_charon_errmsg(tmp_path: Path) -> None:
    path = str(tmp_path / "vici")
    reply = _packet(1, encode_message({"success": "no", "errmsg": "no matching SAs"}))
    seen: list[bytes] = []
    thread = _serve_once(path, [(b"rekey", reply)], seen)
    with Vici(path, timeout=5) as vici, pytest.raises(ViciError, match="rekey: no matching SAs"):
        vici.checked("rekey", {"child": "hub"})
    thread.join(5)
    assert seen == [b"\x00\x05rekey" + encode_message({"child": "hub"})]


def test_unknown_command_and_oversized_packet(tmp_path: Path) -> None:
    path = str(tmp_path / "vici")
    seen: list[bytes] = []
    thread = _serve_once(path, [(b"x", _packet(2)), (b"y", struct.pack("!I", 1 << 30))], seen)
    with Vici(path, timeout=5) as vici:
        with pytest.raises(ViciError, match="does not know the command 'nope'"):
            vici.request("nope")
        with pytest.raises(ViciError, match="bad VICI packet length"):
            vici.request("version")
    thread.join(5)


def test_unreachable_charon(tmp_path: Path) -> None:
    with pytest.raises(ViciError, match="cannot reach charon"):
        with Vici(str(tmp_path / "none")):
            pass


# One list-sa event as charon 5.9.8 sends it (values as seen in the e2e run), after decoding.
LIST_SA = {
    "hub": {
        "uniqueid": "2", "version": "2", "state": "ESTABLISHED", "local-host": "198.51.100.11",
        "local-port": "4500", "local-id": "br1", "remote-host": "198.51.100.10", "remote-port": "4500",
        "remote-id": "hub", "initiator": "yes", "initiator-spi": "5e1f0c3a9b2d4e6f",
        "responder-spi": "a1b2c3d4e5f60718", "nat-any": "no", "encr-alg": "AES_GCM_16", "encr-keysize": "128",
        "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "ECP_256", "established": "12", "rekey-time": "3352",
        "child-sas": {
            "hub-2": {
                "name": "hub", "uniqueid": "2", "reqid": "1", "state": "INSTALLED", "mode": "TUNNEL",
                "protocol": "ESP", "encap": "yes", "spi-in": "950bc558", "spi-out": "16a8ee36",
                "encr-alg": "AES_GCM_16", "encr-keysize": "128", "bytes-in": "840", "packets-in": "10",
                "bytes-out": "840", "packets-out": "10", "install-time": "5",
                "local-ts": ["10.1.0.0/24"], "remote-ts": ["10.0.0.0/24"],
            },
        },
    },
}


def test_parse_list_sas() -> None:
    (ike,), (child,) = parse_list_sas([LIST_SA])
    # the same vocabulary as our own IKE service: lower-case states, proposal-style algorithms
    assert ike["peer"] == "hub" and ike["state"] == "established" and ike["initiator"] is True
    assert ike["local"] == "198.51.100.11:4500" and ike["remote"] == "198.51.100.10:4500"
    assert ike["algorithms"] == "aes128gcm16-prfsha256-ecp256"
    assert ike["age_s"] == 12 and ike["spi_i"] == "5e1f0c3a9b2d4e6f" and ike["spi_r"] == "a1b2c3d4e5f60718"
    assert ike["encap"] is True
    assert child == {
        "peer": "hub", "name": "hub", "state": "installed", "local_ts": ["10.1.0.0/24"],
        "remote_ts": ["10.0.0.0/24"], "spi_in": "950bc558", "spi_out": "16a8ee36",
        "algorithm": "aes-gcm-16-128", "bytes_in": 840, "bytes_out": 840, "packets_in": 10,
        "packets_out": 10, "age_s": 5, "reqid": 1, "encap": True,
    }


def test_algorithm_names_for_cbc_and_other_groups() -> None:
    sa = {"encr-alg": "AES_CBC", "encr-keysize": "256", "integ-alg": "HMAC_SHA2_256_128",
          "prf-alg": "PRF_HMAC_SHA2_384", "dh-group": "CURVE_25519"}
    (ike,), _ = parse_list_sas([{"p": sa}])
    assert ike["algorithms"] == "aes256-sha256-prfsha384-curve25519"
    child = {"encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128"}
    _, (c,) = parse_list_sas([{"p": {"child-sas": {"p-1": child}}}])
    assert c["algorithm"] == "aes-cbc-128-hmac-sha256-128"
    (odd,), _ = parse_list_sas([{"p": {"encr-alg": "CHACHA20_POLY1305", "encr-keysize": "256",
                                       "dh-group": "MODP_1024"}}])
    assert odd["algorithms"] == "chacha20_poly1305-modp_1024"


def test_parse_list_sas_tolerates_half_built_sas() -> None:
    ike_sas, child_sas = parse_list_sas([{"hub": {"state": "CONNECTING"}}, {"odd": "value"}])
    assert [s["state"] for s in ike_sas] == ["connecting"] and child_sas == []
    assert ike_sas[0]["age_s"] is None and ike_sas[0]["initiator"] is False


@pytest.mark.parametrize("body", [b"", b"\x07list"], ids=["empty", "name-cut"])
def test_a_truncated_event_is_a_vici_error(tmp_path: Path, body: bytes) -> None:
    path = str(tmp_path / "vici")
    script = [(b"register", _packet(5)), (b"list-sas", _packet(7, body))]
    thread = _serve_once(path, script, [])
    with Vici(path, timeout=5) as vici, pytest.raises(ViciError, match="truncated list-sa event"):
        vici.streamed("list-sas", "list-sa")
    thread.join(5)
