"""SA proposals: strongSwan-style config strings -> SA payload proposals, the responder's choice,
and the negotiated suite of a chosen proposal.

Config grammar (a subset of strongSwan's): algorithm names joined by "-", e.g.
"aes128gcm16-prfsha256-ecp256", "aes128-sha256-modp2048", ESP "aes128gcm16", "aes256-sha256",
"aes128gcm16-ecp256" (PFS). Several names of one kind in a string offer alternatives inside one
proposal ("aes128-aes256-sha256-prfsha256-modp2048").
"""

from __future__ import annotations

from vpnlab_agent.ike.codec import Proposal, Transform
from vpnlab_agent.ike.constants import DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from vpnlab_agent.ike.crypto import EspSuite, IkeSuite

_ENCR = TransformType.ENCR
_PRF = TransformType.PRF
_INTEG = TransformType.INTEG
_DH = TransformType.DH
_ESN = TransformType.ESN

_TOKENS: dict[str, Transform] = {}
for _bits in (128, 192, 256):
    _TOKENS[f"aes{_bits}"] = Transform(_ENCR, EncrId.AES_CBC, _bits)
    _TOKENS[f"aes{_bits}gcm16"] = Transform(_ENCR, EncrId.AES_GCM_16, _bits)
_INTEG_IDS = {"sha256": IntegId.HMAC_SHA2_256_128, "sha384": IntegId.HMAC_SHA2_384_192,
              "sha512": IntegId.HMAC_SHA2_512_256}
for _name, _id in _INTEG_IDS.items():
    _TOKENS[_name] = Transform(_INTEG, _id)
for _name, _id in (("prfsha256", PrfId.HMAC_SHA2_256), ("prfsha384", PrfId.HMAC_SHA2_384),
                   ("prfsha512", PrfId.HMAC_SHA2_512)):
    _TOKENS[_name] = Transform(_PRF, _id)
for _name, _id in (("modp2048", DhGroup.MODP_2048), ("modp3072", DhGroup.MODP_3072), ("ecp256", DhGroup.ECP_256),
                   ("ecp384", DhGroup.ECP_384), ("curve25519", DhGroup.CURVE25519)):
    _TOKENS[_name] = Transform(_DH, _id)
_TOKENS["noesn"] = Transform(_ESN, EsnId.NO_ESN)
CANONICAL = tuple(_TOKENS)  # the names listed when a proposal has an unknown one
# strongSwan's aliases of the same algorithms
_ALIASES = {"aes": "aes128", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512", "x25519": "curve25519",
            "dh14": "modp2048", "dh15": "modp3072", "dh19": "ecp256", "dh20": "ecp384", "dh31": "curve25519"}
for _bits in (128, 192, 256):
    _ALIASES[f"aes{_bits}gcm128"] = f"aes{_bits}gcm16"
    _ALIASES[f"aes{_bits}gcm"] = f"aes{_bits}gcm16"
for _alias, _name in _ALIASES.items():
    _TOKENS[_alias] = _TOKENS[_name]
# The ESP engines (userspace and XFRM setup) implement HMAC-SHA2-256-128 only.
_ESP_INTEG = {IntegId.HMAC_SHA2_256_128}

# With an integrity algorithm and no explicit PRF, strongSwan uses the matching HMAC as PRF.
_PRF_FROM_INTEG = {IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
                   IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512}


def supported(esp: bool) -> str:
    """What a proposal may name, by kind, for error messages."""
    kinds = {_ENCR: "encryption", _INTEG: "integrity", _PRF: "PRF", _DH: "DH"}
    names: dict[int, list[str]] = {}
    for name in CANONICAL:
        t = _TOKENS[name]
        if t.type in kinds and _allowed(t, esp):
            names.setdefault(t.type, []).append(name)
    return "; ".join(f"{kinds[k]}: {' '.join(v)}" for k, v in names.items())


def _allowed(t: Transform, esp: bool) -> bool:
    if not esp:
        return t.type != _ESN
    return t.type != _PRF and (t.type != _INTEG or t.id in _ESP_INTEG)


def _parse(text: str, esp: bool) -> list[Transform]:
    by_type: dict[int, list[Transform]] = {}
    kind = "ESP" if esp else "IKE"
    for token in text.strip().lower().split("-"):
        t = _TOKENS.get(token)
        if t is None or not _allowed(t, esp):
            raise ValueError(f"{kind} proposal {text!r}: unsupported algorithm {token!r} "
                             f"(supported: {supported(esp)})")
        lst = by_type.setdefault(t.type, [])
        if t not in lst:
            lst.append(Transform(t.type, t.id, t.key_length))
    encrs = by_type.get(_ENCR)
    if not encrs:
        raise ValueError(f"{kind} proposal {text!r}: no encryption algorithm")
    aead = {t.id == EncrId.AES_GCM_16 for t in encrs}
    if len(aead) != 1:
        raise ValueError(f"{kind} proposal {text!r}: mixes AEAD and non-AEAD ciphers")
    if aead == {True} and _INTEG in by_type:
        raise ValueError(f"{kind} proposal {text!r}: AES-GCM takes no integrity algorithm")
    if aead == {False} and _INTEG not in by_type:
        raise ValueError(f"{kind} proposal {text!r}: AES-CBC needs an integrity algorithm")
    if not esp:
        if _PRF not in by_type:
            derived = [_PRF_FROM_INTEG[t.id] for t in by_type.get(_INTEG, []) if t.id in _PRF_FROM_INTEG]
            if not derived:
                raise ValueError(f"{kind} proposal {text!r}: needs a PRF (e.g. prfsha256)")
            by_type[_PRF] = [Transform(_PRF, i) for i in dict.fromkeys(derived)]
        if _DH not in by_type:
            raise ValueError(f"{kind} proposal {text!r}: needs a DH group (e.g. ecp256)")
        if _ESN in by_type:
            raise ValueError(f"{kind} proposal {text!r}: ESN is an ESP option")
    else:
        by_type.setdefault(_ESN, [Transform(_ESN, EsnId.NO_ESN)])  # our ESP engines have no ESN
    order = (_ENCR, _PRF, _INTEG, _DH, _ESN)  # the order strongSwan sends
    return [t for typ in order for t in by_type.get(typ, [])]


def canonical(text: str, esp: bool) -> str:
    """A valid proposal string with every alias replaced by its canonical name (what swanctl.conf
    gets); ValueError naming the problem otherwise."""
    _parse(text, esp)
    names = {id(_TOKENS[n]): n for n in CANONICAL}
    return "-".join(names[id(_TOKENS[t])] for t in text.strip().lower().split("-"))


def ike_proposals_from_config(configs: list[str] | tuple[str, ...], spi: bytes = b"") -> list[Proposal]:
    """IKE proposals numbered from 1. spi: b"" for IKE_SA_INIT, the new 8-byte SPI for a rekey."""
    if not configs:
        raise ValueError("no IKE proposals configured")
    return [Proposal(i, ProtocolId.IKE, spi, _parse(c, esp=False)) for i, c in enumerate(configs, 1)]


def esp_proposals_from_config(configs: list[str] | tuple[str, ...], spi: bytes = b"\x00" * 4) -> list[Proposal]:
    """ESP proposals numbered from 1, carrying our 4-byte inbound SPI."""
    if not configs:
        raise ValueError("no ESP proposals configured")
    return [Proposal(i, ProtocolId.ESP, spi, _parse(c, esp=True)) for i, c in enumerate(configs, 1)]


def without_dh(proposals: list[Proposal]) -> list[Proposal]:
    """Child proposals as sent in IKE_AUTH: keys come from the IKE SA, so no DH transform
    (RFC 7296 §1.2)."""
    return [Proposal(p.num, p.protocol, p.spi, [t for t in p.transforms if t.type != _DH]) for p in proposals]


def dh_group(proposal: Proposal) -> int | None:
    """The first (preferred) DH group of a proposal, or None."""
    for t in proposal.transforms:
        if t.type == _DH and t.id != DhGroup.NONE:
            return t.id
    return None


def _same(a: Transform, b: Transform) -> bool:
    return a.type == b.type and a.id == b.id and a.key_length == b.key_length and not a.other_attrs


def _choose(offered: Proposal, ours: Proposal, ignore_dh: bool) -> Proposal | None:
    chosen: list[Transform] = []
    for typ in (_ENCR, _PRF, _INTEG, _DH, _ESN):
        if ignore_dh and typ == _DH:
            continue
        o = [t for t in offered.transforms if t.type == typ]
        u = [t for t in ours.transforms if t.type == typ]
        if not o and not u:
            continue
        if o and u:
            pick = next((t for t in o if any(_same(t, x) for x in u)), None)
            if pick is None:
                return None
            if not (typ == _INTEG and pick.id == IntegId.NONE) and not (typ == _DH and pick.id == DhGroup.NONE):
                chosen.append(Transform(pick.type, pick.id, pick.key_length))
        elif o:  # the peer offers a type we do not use: fine only if it also offers "none"
            if not any(t.id == 0 and not t.other_attrs for t in o) or typ in (_ENCR, _PRF):
                return None
        else:  # we need a type the peer left out; a missing ESN transform means no ESN
            if typ != _ESN and not (typ == _INTEG and all(t.id == IntegId.NONE for t in u)):
                return None
    return Proposal(offered.num, offered.protocol, offered.spi, chosen)


def _spi_ok(p: Proposal) -> bool:
    if p.protocol == ProtocolId.IKE:
        return len(p.spi) in (0, 8)
    if p.protocol == ProtocolId.ESP:
        return len(p.spi) == 4
    return False


def select(offered: list[Proposal], ours: list[Proposal], ignore_dh: bool = False) -> Proposal | None:
    """Responder's choice (RFC 7296 §2.7): the first offered proposal we accept, reduced to one
    transform per type (the first the peer listed among those we accept). The result keeps the
    offered number and SPI; the caller puts its own SPI in before answering.
    ignore_dh: for child SAs negotiated in IKE_AUTH, where DH transforms are meaningless."""
    for off in offered:
        if not _spi_ok(off):
            continue
        for mine in ours:
            if mine.protocol != off.protocol:
                continue
            chosen = _choose(off, mine, ignore_dh)
            if chosen is not None:
                try:
                    suite_from_proposal(chosen)
                except ValueError:
                    continue
                return chosen
    return None


def suite_from_proposal(p: Proposal) -> IkeSuite | EspSuite:
    """The suite of a chosen proposal (exactly one transform per type). ValueError otherwise."""
    by_type: dict[int, Transform] = {}
    for t in p.transforms:
        if t.type in by_type:
            raise ValueError(f"proposal {p.num} has several transforms of type {t.type}")
        by_type[t.type] = t
    encr = by_type.get(_ENCR)
    if encr is None or encr.key_length is None:
        raise ValueError(f"proposal {p.num} lacks an encryption algorithm with a key length")
    integ = by_type[_INTEG].id if _INTEG in by_type else IntegId.NONE
    dh = by_type.get(_DH)
    if p.protocol == ProtocolId.IKE:
        if _PRF not in by_type or dh is None:
            raise ValueError(f"proposal {p.num} lacks a PRF or a DH group")
        return IkeSuite(encr.id, encr.key_length, by_type[_PRF].id, integ, dh.id)
    if p.protocol == ProtocolId.ESP:
        esn = by_type.get(_ESN)
        if esn is not None and esn.id != EsnId.NO_ESN:
            raise ValueError(f"proposal {p.num}: extended sequence numbers are not supported")
        return EspSuite(encr.id, encr.key_length, integ, dh.id if dh else None)
    raise ValueError(f"proposal {p.num}: unsupported protocol {p.protocol}")
