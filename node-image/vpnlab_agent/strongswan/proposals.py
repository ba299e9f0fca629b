"""Our proposal strings ("aes128gcm16-prfsha256-ecp256") mapped to strongSwan's keywords.

Our strings already use strongSwan-like tokens; this maps the few aliases we accept (dh14, x25519,
aes128gcm, ...) and refuses anything unknown, so a typo fails at render time with a clear line
instead of a proposal strongSwan silently ignores.
"""

from __future__ import annotations


class ProposalError(ValueError):
    """A proposal string has a token we cannot map; one-line message."""


_ENCR = {
    "aes128gcm16": "aes128gcm16", "aes128gcm": "aes128gcm16", "aes128gcm128": "aes128gcm16",
    "aes256gcm16": "aes256gcm16", "aes256gcm": "aes256gcm16", "aes256gcm128": "aes256gcm16",
    "aes": "aes128", "aes128": "aes128", "aes128cbc": "aes128",
    "aes256": "aes256", "aes256cbc": "aes256",
}
_INTEG = {
    "sha256": "sha256", "sha2_256": "sha256", "hmacsha256": "sha256", "sha256_128": "sha256",
    "sha384": "sha384", "sha2_384": "sha384",
}
_PRF = {"prfsha256": "prfsha256", "prfsha384": "prfsha384"}
_DH = {
    "modp2048": "modp2048", "dh14": "modp2048",
    "ecp256": "ecp256", "dh19": "ecp256",
    "curve25519": "curve25519", "x25519": "curve25519", "dh31": "curve25519",
}


def _map(proposal: str, *, ike: bool) -> str:
    tokens = [t for t in proposal.strip().lower().split("-") if t]
    if not tokens:
        raise ProposalError("empty proposal")
    out: list[str] = []
    encr = integ = prf = False
    for token in tokens:
        if token in _ENCR:
            encr = True
            out.append(_ENCR[token])
        elif token in _INTEG:
            integ = True
            out.append(_INTEG[token])
        elif ike and token in _PRF:
            prf = True
            out.append(_PRF[token])
        elif token in _DH:
            out.append(_DH[token])
        elif token == "esn" or token == "noesn":
            out.append(token)
        else:
            kind = "IKE" if ike else "ESP"
            raise ProposalError(f"{kind} proposal {proposal!r}: unknown algorithm {token!r}")
    if not encr:
        raise ProposalError(f"proposal {proposal!r}: no encryption algorithm")
    aead = any("gcm" in t for t in out)
    if not aead and not integ:
        raise ProposalError(f"proposal {proposal!r}: a non-AEAD cipher needs an integrity algorithm")
    if ike and aead and not prf:
        raise ProposalError(f"IKE proposal {proposal!r}: an AEAD cipher needs a PRF (e.g. prfsha256)")
    if ike and not any(t in _DH.values() for t in out):
        raise ProposalError(f"IKE proposal {proposal!r}: no DH group")
    return "-".join(out)


def ike_proposals(proposals: tuple[str, ...] | list[str]) -> str:
    """strongSwan `proposals = ...` value (comma-separated, order kept)."""
    if not proposals:
        raise ProposalError("no IKE proposals")
    return ",".join(_map(p, ike=True) for p in proposals)


def esp_proposals(proposals: tuple[str, ...] | list[str]) -> str:
    if not proposals:
        raise ProposalError("no ESP proposals")
    return ",".join(_map(p, ike=False) for p in proposals)
