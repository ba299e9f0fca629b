"""Planning the topology's authentication and crypto keys: PSKs (lab-wide, per router, per pair),
`auth`, and `crypto` merged from `defaults` into each router, then checked across each tunnel.

The raw forms are in schema.py (PskSecret, PairSecret, CryptoSpec); what comes out is in model.py
(CryptoSettings, Node.psk, Lab.psk, Lab.pair_psks). Each problem is one TopologyError line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from vpnlab_agent.ike import proposals as ike_proposals

from vpnlab.errors import TopologyError
from vpnlab.topology.model import CryptoSettings, Lab
from vpnlab.topology.schema import NodeSpec, PskSecret, TopologySpec

MAX_PSK_FILE_BYTES = 4096

Fail = Callable[[str, str], TopologyError]


def read_psk(secret: PskSecret, where: str, base: Path, fail: Fail) -> str:
    """The key of a `{psk: ...}` or `{psk_file: ...}` mapping; a relative file is relative to `base`."""
    if secret.psk is not None:
        return secret.psk
    assert secret.psk_file is not None
    where = f"{where}.psk_file"
    path = Path(secret.psk_file)
    if not path.is_absolute():
        path = base / path
    if path.exists() and not path.is_file():
        # /dev/zero or a FIFO would never end; a directory cannot hold a key
        raise fail(where, f"{path} is not a regular file")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PSK_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise fail(where, f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(where, f"cannot read {path}: {e}") from None
    if len(raw) > MAX_PSK_FILE_BYTES:
        raise fail(where, f"{path} is larger than {MAX_PSK_FILE_BYTES} bytes: not a key file")
    psk = text.strip()
    if not psk:
        raise fail(where, f"{path} is empty")
    if "\n" in psk:
        raise fail(where, f"{path} must hold one line, the key")
    return psk


def pair_psks(spec: TopologySpec, base: Path, fail: Fail) -> tuple[tuple[frozenset[str], str], ...]:
    out: list[tuple[frozenset[str], str]] = []
    for i, pair in enumerate(spec.secrets):
        where = f"secrets.{i}"
        for name in pair.peers:
            node = spec.nodes.get(name)
            if node is None or node.role == "host":
                routers = ", ".join(n for n, s in spec.nodes.items() if s.role != "host")
                raise fail(f"{where}.peers", f"unknown router {name!r} (routers in this lab: {routers})")
        names = frozenset(pair.peers)
        if any(names == other for other, _ in out):
            raise fail(f"{where}.peers", f"a secret for {' and '.join(sorted(names))} is already given")
        out.append((names, read_psk(pair, where, base, fail)))
    return tuple(out)


_FIELDS = {  # CryptoSpec key -> CryptoSettings field
    "proposals": "ike_proposals",
    "esp_proposals": "esp_proposals",
    "ike_lifetime": "ike_lifetime_s",
    "child_lifetime": "child_lifetime_s",
    "rekey_margin": "rekey_margin_s",
    "dpd_interval": "dpd_interval_s",
    "nat_keepalive": "nat_keepalive_s",
    "cert_key": "cert_key",
    "fragmentation": "fragmentation",
    "fragment_size": "fragment_size",
}


def crypto_settings(name: str, defaults: TopologySpec, node: NodeSpec, fail: Fail) -> CryptoSettings:
    """A router's settings: its own `crypto` keys over `defaults.crypto` key by key, then its `auth`."""
    values: dict[str, object] = {}
    origin: dict[str, str] = {}  # which field set each key, for errors
    for spec, where in ((defaults.defaults.crypto, "defaults.crypto"), (node.crypto, f"nodes.{name}.crypto")):
        if spec is None:
            continue
        for key in spec.model_fields_set:
            value = getattr(spec, key)
            values[_FIELDS[key]] = tuple(value) if isinstance(value, list) else value
            origin[key] = f"{where}.{key}"
    settings = CryptoSettings(auth=node.auth or defaults.defaults.auth, **values)  # type: ignore[arg-type]
    margin = settings.rekey_margin_s
    if margin is not None:
        for key, life in (("ike_lifetime", settings.ike_lifetime_s), ("child_lifetime", settings.child_lifetime_s)):
            if margin >= life:
                where = origin.get("rekey_margin", origin.get(key, f"nodes.{name}.crypto"))
                raise fail(where, f"rekey margin {margin} s is not shorter than {name}'s {key.replace('_', ' ')} "
                                  f"{life} s")
    return settings


def check_tunnel(hub: str, hub_crypto: CryptoSettings, branch: str, branch_crypto: CryptoSettings,
                 where: Callable[[str], str], fail: Fail) -> None:
    """The two ends of one tunnel must share an IKE and an ESP proposal, or it can never come up."""
    for key, esp in (("proposals", False), ("esp_proposals", True)):
        ours, theirs = (getattr(c, "esp_proposals" if esp else "ike_proposals") for c in (branch_crypto, hub_crypto))
        build = ike_proposals.esp_proposals_from_config if esp else ike_proposals.ike_proposals_from_config
        offered, accepted = build(list(ours)), build(list(theirs))
        if ike_proposals.select(offered, accepted) is None:
            kind = "ESP" if esp else "IKE"
            raise fail(where(key), f"no {kind} proposal in common with {hub} "
                                   f"({branch} offers {', '.join(ours)}; {hub} accepts {', '.join(theirs)})")


def check_psks(routers: Iterable[tuple[str, str]], psk_of: Callable[[str, str], str | None],
               auth_of: Callable[[str], str], fail: Fail) -> None:
    """Every tunnel with a PSK-authenticated end has a key."""
    for hub, branch in routers:
        if "psk" in (auth_of(hub), auth_of(branch)) and psk_of(hub, branch) is None:
            raise fail("secret", f"missing: the tunnel {branch}-{hub} authenticates with a PSK and neither "
                                 f"the pair, {branch} nor {hub} has a secret (give secret: {{psk: ...}})")


