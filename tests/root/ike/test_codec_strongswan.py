"""Our codec and crypto against a real strongSwan charon: bytes from a real peer are the proof.

charon-systemd runs as responder in its own network namespace (its own strongswan.conf through
STRONGSWAN_CONF, its own vici socket), joined by a veth to a second namespace where this test's
UDP socket lives. A minimal initiator built from codec/crypto/proposals then runs IKE_SA_INIT and
IKE_AUTH (PSK) per suite, checks what charon sends byte for byte where possible (re-encoding,
NAT-D hashes, the responder's AUTH), rekeys the child (PFS) and the IKE SA, pings through the
child SAs with ESP sealed by our derived keys, and provokes INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN
and AUTHENTICATION_FAILED. charon loads kernel-libipsec (the kernel here has no ESP), which makes it
fake its NAT-D source hash to force UDP encapsulation: so IKE_AUTH and later go to port 4500 with
the non-ESP marker, as they will in the lab, and the child SA is really accepted.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpnlab_agent.ike.codec import (
    KE,
    SA,
    Auth,
    Delete,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    TSi,
    TSr,
    VendorId,
    decode,
    encode,
    payload_body,
    ts_from_cidr,
    ts_to_cidrs,
)
from vpnlab_agent.ike.constants import (
    VENDOR_ID,
    AuthMethod,
    DhGroup,
    EncrId,
    ExchangeType,
    IdType,
    NotifyType,
    ProtocolId,
)
from vpnlab_agent.ike.crypto import (
    ChildKeys,
    DhKeyPair,
    EspSuite,
    IkeKeys,
    IkeSuite,
    SkCipher,
    derive_child_keys,
    derive_ike_keys,
    nat_hash,
    psk_auth,
    signed_octets,
)
from vpnlab_agent.ike.proposals import (
    esp_proposals_from_config,
    ike_proposals_from_config,
    select,
    suite_from_proposal,
)

from tests.root.charon import Charon

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

OUR_ADDR, PEER_ADDR = "192.0.2.1", "192.0.2.2"
PSK = b"codec-interop-secret"
IKE_SUITES = ["aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-curve25519", "aes128-sha256-modp2048"]

CODEC_CHARON_PLUGINS = "random nonce openssl aes sha1 sha2 hmac gcm gmp kdf kernel-libipsec kernel-netlink socket-default vici"

SWANCTL_CONF = """
connections {{
  codec {{
    version = 2
    local_addrs = {peer}
    remote_addrs = {ours}
    proposals = {proposals}
    local {{
      auth = psk
      id = hub.vpnlab
    }}
    remote {{
      auth = psk
      id = branch.vpnlab
    }}
    children {{
      net {{
        local_ts = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = aes128gcm16, aes256-sha256, aes128gcm16-ecp256
      }}
    }}
  }}
}}
secrets {{
  ike-branch {{
    id-1 = hub.vpnlab
    id-2 = branch.vpnlab
    secret = "{psk}"
  }}
}}
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=20)


NON_ESP_MARKER = b"\x00" * 4  # RFC 3948 §2.2: IKE on port 4500 starts with four zero bytes


@dataclass
class Peer:
    sock: socket.socket  # ours on port 500
    sock_natt: socket.socket  # ours on port 4500
    log: Path


@pytest.fixture(scope="module")
def charon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if not (Charon.installed() and shutil.which("ip")):
        pytest.skip("charon-systemd/swanctl (strongSwan) or iproute2 not installed")
    from pyroute2.netns import popns, pushns

    tag = f"ikc{os.getpid() % 100000}"
    ns_peer, ns_ours = f"{tag}s", f"{tag}c"
    d = tmp_path_factory.mktemp("charon")
    proc: Charon | None = None
    socks: list[socket.socket] = []
    try:
        for ns in (ns_ours, ns_peer):  # leftovers of a killed run with the same pid
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        _run("ip", "netns", "add", ns_peer)
        _run("ip", "netns", "add", ns_ours)
        _run("ip", "link", "add", f"{tag}a", "netns", ns_ours, "type", "veth", "peer", f"{tag}b", "netns", ns_peer)
        for ns, dev, addr in ((ns_ours, f"{tag}a", OUR_ADDR), (ns_peer, f"{tag}b", PEER_ADDR)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # charon's protected subnet: libipsec routes it through its TUN only with a source address in it
        _run("ip", "-n", ns_peer, "addr", "add", "10.2.0.1/24", "dev", "lo")
        proc = Charon(ns_peer, d, SWANCTL_CONF.format(
            peer=PEER_ADDR, ours=OUR_ADDR, proposals=", ".join(IKE_SUITES), psk=PSK.decode()),
            load=CODEC_CHARON_PLUGINS, options=("install_routes = no", "retransmit_tries = 1"),
            levels=("ike = 2", "cfg = 2"))
        pushns(ns_ours)  # sockets stay in the namespace they were created in
        try:
            for port in (500, 4500):
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                socks[-1].bind((OUR_ADDR, port))
                socks[-1].settimeout(5)
        finally:
            popns()
        yield Peer(socks[0], socks[1], proc.log_path)
    finally:
        for sock in socks:
            sock.close()
        if proc is not None:
            proc.close()
        for ns in (ns_ours, ns_peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _exchange(peer: Peer, data: bytes, natt: bool = False) -> bytes:
    sock, port = (peer.sock_natt, 4500) if natt else (peer.sock, 500)
    sock.sendto(NON_ESP_MARKER + data if natt else data, (PEER_ADDR, port))
    try:
        reply, addr = sock.recvfrom(65535)
    except socket.timeout:
        pytest.fail(f"no answer from charon; its log:\n{peer.log.read_text()[-3000:]}")
    assert addr == (PEER_ADDR, port)
    if natt:
        assert reply[:4] == NON_ESP_MARKER
        return reply[4:]
    return reply


@dataclass
class InitResult:
    suite: IkeSuite
    spi_i: bytes
    spi_r: bytes
    request: bytes
    response: bytes
    ni: bytes
    nr: bytes
    shared: bytes


def _sa_init(peer: Peer, proposal: str, ke_group: int | None = None) -> tuple[Message, bytes, bytes, DhKeyPair]:
    spi_i = os.urandom(8)
    props = ike_proposals_from_config([proposal])
    group = ke_group or suite_from_proposal(props[0]).dh  # type: ignore[union-attr]
    dh = DhKeyPair.generate(group)
    ni = os.urandom(32)
    req = encode(Message(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False, [
        SA(props), KE(group, dh.public_bytes), Nonce(ni),
        Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, bytes(8), OUR_ADDR, 500)),
        Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_DESTINATION_IP,
               nat_hash(spi_i, bytes(8), PEER_ADDR, 500)),
        VendorId(VENDOR_ID),
    ]))
    resp = _exchange(peer, req)
    assert encode(decode(resp)) == resp, "re-encoding charon's IKE_SA_INIT response must give its exact bytes"
    msg = decode(resp)
    assert msg.spi_i == spi_i and msg.response and not msg.initiator and msg.message_id == 0
    return msg, req, resp, dh


def _init_ok(peer: Peer, proposal: str) -> InitResult:
    msg, req, resp, dh = _sa_init(peer, proposal)
    assert msg.find(SA) is not None, f"charon refused {proposal}: {msg.payloads}"
    chosen = msg.find(SA).proposals  # type: ignore[union-attr]
    assert len(chosen) == 1
    ours = ike_proposals_from_config([proposal])
    assert select(chosen, ours) is not None
    suite = suite_from_proposal(chosen[0])
    assert suite.describe() == suite_from_proposal(ours[0]).describe()
    ke = msg.find(KE)
    nr = msg.find(Nonce).data  # type: ignore[union-attr]
    assert ke is not None and ke.group == suite.dh and len(nr) >= 16
    # charon's NAT-D hashes use both SPIs of the response header: recompute them with ours. Its
    # source hash is deliberately wrong (kernel-libipsec forces UDP encapsulation that way).
    (src,) = msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)
    (dst,) = msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert dst.data == nat_hash(msg.spi_i, msg.spi_r, OUR_ADDR, 500)
    assert len(src.data) == 20 and src.data != nat_hash(msg.spi_i, msg.spi_r, PEER_ADDR, 500)
    ni = decode(req).find(Nonce).data  # type: ignore[union-attr]
    return InitResult(suite, msg.spi_i, msg.spi_r, req, resp, ni, nr, dh.shared_secret(ke.data))


def _auth(peer: Peer, init: InitResult, psk: bytes, esp_spi: bytes = b"\x00\x00\xc0\xde"
          ) -> tuple[Message, SkCipher, SkCipher, IkeKeys]:
    s = init.suite
    keys = derive_ike_keys(s, init.ni, init.nr, init.shared, init.spi_i, init.spi_r)
    out = SkCipher(s, keys.sk_ei, keys.sk_ai)
    inb = SkCipher(s, keys.sk_er, keys.sk_ar)
    idi = IDi(IdType.FQDN, b"branch.vpnlab")
    octets = signed_octets(init.request, init.nr, s.prf, keys.sk_pi, payload_body(idi))
    req = Message(init.spi_i, init.spi_r, ExchangeType.IKE_AUTH, 1, True, False, [
        idi, IDr(IdType.FQDN, b"hub.vpnlab"), Auth(AuthMethod.PSK, psk_auth(s.prf, psk, octets)),
        SA(esp_proposals_from_config(["aes128gcm16"], spi=esp_spi)),
        TSi([ts_from_cidr("10.1.0.0/24")]), TSr([ts_from_cidr("10.2.0.0/24")]),
    ])
    resp = decode(_exchange(peer, encode(req, out), natt=True), inb)
    assert resp.exchange == ExchangeType.IKE_AUTH and resp.response and resp.message_id == 1
    return resp, out, inb, keys


@pytest.mark.parametrize("proposal", IKE_SUITES)
def test_ike_sa_init_and_auth_against_charon(charon: Peer, proposal: str) -> None:
    init = _init_ok(charon, proposal)
    resp, out, inb, keys = _auth(charon, init, PSK)
    idr, auth = resp.find(IDr), resp.find(Auth)
    assert idr is not None and auth is not None, f"no IDr/AUTH: {resp.payloads}\n{charon.log.read_text()[-3000:]}"
    assert (idr.id_type, idr.data) == (IdType.FQDN, b"hub.vpnlab")
    # the responder's AUTH over its IKE_SA_INIT message, our nonce and its IDr, with our keys
    octets = signed_octets(init.response, init.ni, init.suite.prf, keys.sk_pr, payload_body(idr))
    assert auth.method == AuthMethod.PSK and auth.data == psk_auth(init.suite.prf, PSK, octets)
    # the child SA: charon's choice of our ESP proposal with its own SPI, and narrowed selectors
    sa, tsi, tsr = resp.find(SA), resp.find(TSi), resp.find(TSr)
    assert sa is not None and tsi is not None and tsr is not None, resp.payloads
    (chosen,) = sa.proposals
    assert chosen.protocol == ProtocolId.ESP and len(chosen.spi) == 4
    assert suite_from_proposal(chosen).describe() == "aes128gcm16"
    assert [ts_to_cidrs(t) for t in tsi.selectors] == [["10.1.0.0/24"]]
    assert [ts_to_cidrs(t) for t in tsr.selectors] == [["10.2.0.0/24"]]
    # Delete the IKE SA: charon's answer is an empty, encrypted INFORMATIONAL response
    bye = Message(init.spi_i, init.spi_r, ExchangeType.INFORMATIONAL, 2, True, False, [Delete(ProtocolId.IKE, [])])
    ack = decode(_exchange(charon, encode(bye, out), natt=True), inb)
    assert ack.exchange == ExchangeType.INFORMATIONAL and ack.response and ack.message_id == 2
    assert ack.payloads == []


def test_wrong_psk_gets_authentication_failed(charon: Peer) -> None:
    init = _init_ok(charon, IKE_SUITES[0])
    resp, *_ = _auth(charon, init, b"not the secret")
    assert resp.notifies(NotifyType.AUTHENTICATION_FAILED), resp.payloads
    assert resp.find(Auth) is None


def test_wrong_ke_group_gets_invalid_ke_payload(charon: Peer) -> None:
    msg, *_ = _sa_init(charon, IKE_SUITES[0], ke_group=DhGroup.CURVE25519)
    (n,) = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
    assert n.data == DhGroup.ECP_256.to_bytes(2, "big")
    assert msg.spi_r == bytes(8) and msg.find(SA) is None


def test_no_common_proposal(charon: Peer) -> None:
    msg, *_ = _sa_init(charon, "aes256-sha256-prfsha384-modp2048")
    assert msg.notifies(NotifyType.NO_PROPOSAL_CHOSEN), msg.payloads


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ping_packet(src: str, dst: str, ident: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"vpnlab-codec-keymat!"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:] + icmp


def _ping_through(peer: Peer, their_spi: bytes, our_spi: bytes, child: ChildKeys, ident: int, seq: int = 1) -> None:
    """ESP-in-UDP ping to 10.2.0.1 behind charon sealed with the i->r keys; the echo reply must
    come back on our SPI and open with the r->i keys."""
    ping = _ping_packet("10.1.0.5", "10.2.0.1", ident)
    pad = (-(len(ping) + 2)) % 4
    trailer = bytes(range(1, pad + 1)) + bytes((pad, 4))  # next header 4: IPv4 (tunnel mode)
    head = their_spi + struct.pack("!I", seq)
    iv = os.urandom(8)
    esp = head + iv + AESGCM(child.enc_i[:16]).encrypt(child.enc_i[16:] + iv, ping + trailer, head)
    peer.sock_natt.sendto(esp, (PEER_ADDR, 4500))
    try:
        reply, _ = peer.sock_natt.recvfrom(65535)
    except socket.timeout:
        pytest.fail(f"no ESP reply from charon; its log:\n{peer.log.read_text()[-3000:]}")
    assert reply[:4] == our_spi, "expected ESP on our inbound SPI"
    plain = AESGCM(child.enc_r[:16]).decrypt(child.enc_r[16:] + reply[8:16], reply[16:], reply[:8])
    assert plain[-1] == 4
    inner = plain[: len(plain) - plain[-2] - 2]
    assert socket.inet_ntoa(inner[12:16]) == "10.2.0.1" and socket.inet_ntoa(inner[16:20]) == "10.1.0.5"
    assert inner[9] == 1 and inner[20] == 0 and inner[24:26] == ident.to_bytes(2, "big")  # our echo reply


def test_child_keymat_carries_esp_through_charon(charon: Peer) -> None:
    """KEYMAT order and the GCM salt, proven by traffic: an ESP-in-UDP ping sealed with our
    initiator->responder key is opened by charon's libipsec, answered by its kernel, and the
    reply charon seals with the responder->initiator key opens with ours."""
    init = _init_ok(charon, IKE_SUITES[0])
    our_spi = os.urandom(4)
    resp, out, inb, keys = _auth(charon, init, PSK, esp_spi=our_spi)
    (chosen,) = resp.find(SA).proposals  # type: ignore[union-attr]
    child = derive_child_keys(EspSuite(EncrId.AES_GCM_16, 128), init.suite.prf, keys.sk_d, init.ni, init.nr)
    _ping_through(charon, chosen.spi, our_spi, child, 0x4242)
    bye = Message(init.spi_i, init.spi_r, ExchangeType.INFORMATIONAL, 2, True, False, [Delete(ProtocolId.IKE, [])])
    decode(_exchange(charon, encode(bye, out), natt=True), inb)


def test_rekeys_against_charon(charon: Peer) -> None:
    """CREATE_CHILD_SA both ways we use it: a child rekey with PFS (KEYMAT with g^ir, proven by an
    ESP ping on the new SA) and an IKE SA rekey (SKEYSEED from the old SK_d, proven by charon
    answering on the new IKE SA), then DELETEs for the old child and the old IKE SA."""
    init = _init_ok(charon, IKE_SUITES[0])
    old_spi = os.urandom(4)
    resp, out, inb, keys = _auth(charon, init, PSK, esp_spi=old_spi)
    (old_chosen,) = resp.find(SA).proposals  # type: ignore[union-attr]
    prf_id = init.suite.prf

    # child rekey with PFS (ecp256)
    new_spi, ni, dh = os.urandom(4), os.urandom(32), DhKeyPair.generate(DhGroup.ECP_256)
    req = Message(init.spi_i, init.spi_r, ExchangeType.CREATE_CHILD_SA, 2, True, False, [
        Notify(ProtocolId.ESP, old_spi, NotifyType.REKEY_SA),
        SA(esp_proposals_from_config(["aes128gcm16-ecp256"], spi=new_spi)), Nonce(ni),
        KE(DhGroup.ECP_256, dh.public_bytes),
        TSi([ts_from_cidr("10.1.0.0/24")]), TSr([ts_from_cidr("10.2.0.0/24")]),
    ])
    ans = decode(_exchange(charon, encode(req, out), natt=True), inb)
    sa, nr, ke = ans.find(SA), ans.find(Nonce), ans.find(KE)
    assert sa is not None and nr is not None and ke is not None, ans.payloads
    (child_prop,) = sa.proposals
    suite = suite_from_proposal(child_prop)
    assert suite == EspSuite(EncrId.AES_GCM_16, 128, 0, DhGroup.ECP_256) and ke.group == DhGroup.ECP_256
    child = derive_child_keys(suite, prf_id, keys.sk_d, ni, nr.data, dh.shared_secret(ke.data))
    # make-before-break: delete the old child (our inbound SPI), charon answers with its own
    dele = Message(init.spi_i, init.spi_r, ExchangeType.INFORMATIONAL, 3, True, False,
                   [Delete(ProtocolId.ESP, [old_spi])])
    ans = decode(_exchange(charon, encode(dele, out), natt=True), inb)
    assert ans.payloads == [Delete(ProtocolId.ESP, [old_chosen.spi])]
    _ping_through(charon, child_prop.spi, new_spi, child, 0x5151)

    # IKE SA rekey
    new_spi_i, ni, dh = os.urandom(8), os.urandom(32), DhKeyPair.generate(DhGroup.ECP_256)
    req = Message(init.spi_i, init.spi_r, ExchangeType.CREATE_CHILD_SA, 4, True, False, [
        SA(ike_proposals_from_config([IKE_SUITES[0]], spi=new_spi_i)), Nonce(ni),
        KE(DhGroup.ECP_256, dh.public_bytes),
    ])
    ans = decode(_exchange(charon, encode(req, out), natt=True), inb)
    sa, nr, ke = ans.find(SA), ans.find(Nonce), ans.find(KE)
    assert sa is not None and nr is not None and ke is not None, ans.payloads
    (chosen,) = sa.proposals
    assert chosen.protocol == ProtocolId.IKE and len(chosen.spi) == 8
    new_suite = suite_from_proposal(chosen)
    new = derive_ike_keys(new_suite, ni, nr.data, dh.shared_secret(ke.data), new_spi_i, chosen.spi,
                          old_sk_d=keys.sk_d, old_prf=prf_id)
    new_out = SkCipher(new_suite, new.sk_ei, new.sk_ai)
    new_in = SkCipher(new_suite, new.sk_er, new.sk_ar)
    # delete the old IKE SA on the old SA, then talk on the new one (message IDs restart at 0)
    bye = Message(init.spi_i, init.spi_r, ExchangeType.INFORMATIONAL, 5, True, False, [Delete(ProtocolId.IKE, [])])
    assert decode(_exchange(charon, encode(bye, out), natt=True), inb).payloads == []
    dpd = Message(new_spi_i, chosen.spi, ExchangeType.INFORMATIONAL, 0, True, False, [])
    ans = decode(_exchange(charon, encode(dpd, new_out), natt=True), new_in)
    assert ans.response and ans.message_id == 0 and ans.payloads == []
    _ping_through(charon, child_prop.spi, new_spi, child, 0x6161, seq=2)  # the child moved to the new IKE SA
    bye = Message(new_spi_i, chosen.spi, ExchangeType.INFORMATIONAL, 1, True, False, [Delete(ProtocolId.IKE, [])])
    assert decode(_exchange(charon, encode(bye, new_out), natt=True), new_in).payloads == []
