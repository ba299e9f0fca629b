"""What the IKE layer hands to a data-plane engine: one negotiated ESP child SA.

Pure data: the IKE state machine produces it, `dataplane.base.Engine.install()` consumes it.
Extensions (mesh, HSVPN, ...) negotiate the metadata fields; their defaults make a plain SA.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpnlab_agent.esp.trailer import RFC4303, Trailer


@dataclass(frozen=True)
class EspAlgorithm:
    """Negotiated ESP transform.

    cipher: "aes-gcm-16" (RFC 4106, key material includes the 4-byte salt at its end) or
            "aes-cbc" (RFC 3602).
    key_bits: 128 or 256 (cipher key length, without salt).
    integ: None for AEAD, "hmac-sha256-128" (RFC 4868) for aes-cbc.
    """

    cipher: str
    key_bits: int
    integ: str | None = None

    @property
    def aead(self) -> bool:
        return self.integ is None


@dataclass(frozen=True)
class ChildSA:
    """One ESP SA pair (tunnel mode). "in" is what we receive, "out" what we send."""

    name: str  # peer name, for logs and status
    reqid: int  # stable per (peer, selectors); survives rekeys, lets engines swap SAs make-before-break
    spi_in: int
    spi_out: int
    algorithm: EspAlgorithm
    enc_key_in: bytes  # for aes-gcm-16: key || 4-byte salt
    enc_key_out: bytes
    integ_key_in: bytes  # b"" for AEAD
    integ_key_out: bytes
    local_addr: str  # our outer (underlay) address
    remote_addr: str  # peer's outer address
    local_port: int  # UDP encapsulation ports (RFC 3948); 0/0 means raw ESP (kernel engine only)
    remote_port: int
    local_ts: tuple[str, ...]  # CIDRs on our side
    remote_ts: tuple[str, ...]  # CIDRs on the peer's side
    soft_lifetime_bytes: int = 0  # 0: unlimited; engines report when crossed so IKE rekeys
    hard_lifetime_bytes: int = 0
    # Among installed SAs whose remote selectors cover a destination, the longest prefix wins, then
    # the higher preference: a mesh shortcut may carry a LAN's real prefix and still win over the
    # hub tunnel whose selectors cover it too; when the shortcut goes, traffic falls back to the hub.
    preference: int = 0
    context: str = ""  # routing context (HSVPN: one routing table / TUN device each); "" = the main one
    mark: int = 0  # XFRM mark (value, full mask) on this SA's states and policies; 0 = none
    if_id: int = 0  # XFRM interface id on this SA's states and policies; 0 = none
    trailer: Trailer = RFC4303  # builds and reads the ESP trailer (esp/trailer.py); plain RFC 4303 by default

    @property
    def encap(self) -> bool:
        return self.remote_port != 0


@dataclass
class SACounters:
    bytes_in: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    packets_out: int = 0
    replay_dropped: int = 0
    auth_failed: int = 0
    policy_dropped: int = 0  # decrypted fine but inner addresses outside the negotiated selectors
    last_used: float = 0.0  # monotonic seconds of the last packet either way
    last_in: float = 0.0  # monotonic seconds of the last authentic inbound packet (liveness, RFC 7296 §2.4)
