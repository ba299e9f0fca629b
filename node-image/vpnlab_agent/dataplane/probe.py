"""Which data-plane engine this kernel can run: found by trying, never by reading version strings."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from vpnlab_agent.dataplane import xfrm_netlink as nl
from vpnlab_agent.dataplane.base import Engine, EngineError

log = logging.getLogger(__name__)

# Documentation addresses (RFC 5737): the throwaway state never carries a packet.
_PROBE_SRC, _PROBE_DST = "192.0.2.254", "192.0.2.253"


def esp_probe_error() -> str | None:
    """None if this network namespace's kernel accepts an ESP state with AES-GCM, else why not."""
    spi = 0xC0000000 | secrets.randbits(24)  # high range: never what our IKE allocates
    spec = nl.StateSpec(
        src=_PROBE_SRC, dst=_PROBE_DST, spi=spi, reqid=0,
        aead=("rfc4106(gcm(aes))", secrets.token_bytes(20), 128), encap=(4500, 4500),
    )  # fmt: skip
    try:
        sock = nl.XfrmSocket()
    except OSError as exc:
        return f"no XFRM netlink ({exc.strerror or exc})"
    try:
        sock.request(nl.XFRM_MSG_NEWSA, nl.newsa_payload(spec), nl.NLM_F_CREATE | nl.NLM_F_EXCL)
    except OSError as exc:
        return f"the kernel refused an ESP AES-GCM state ({exc.strerror or exc})"
    else:
        try:
            sock.request(nl.XFRM_MSG_DELSA, nl.sa_id_payload(_PROBE_DST, spi))
        except OSError as exc:
            log.warning("probe: could not delete the throwaway ESP state %#010x: %s", spi, exc)
        return None
    finally:
        sock.close()


def select_engine(preference: str, route_src: str | None = None, **options: Any) -> Engine:
    """"auto": kernel XFRM if the kernel has ESP, else the userspace engine; "xfrm"/"userspace":
    that engine or EngineError saying why not. options go to the engine (e.g. on_lifetime)."""
    if preference not in ("auto", "xfrm", "userspace"):
        raise EngineError(f"unknown data plane {preference!r} (choose auto, userspace or xfrm)")
    if preference in ("auto", "xfrm"):
        why_not = esp_probe_error()
        if why_not is None:
            from vpnlab_agent.dataplane.xfrm import XfrmEngine

            return XfrmEngine(route_src=route_src, **options)
        if preference == "xfrm":
            raise EngineError(f"data plane 'xfrm' needs kernel ESP, but {why_not}: use 'userspace' or 'auto'")
        log.info("kernel XFRM unusable (%s): using the userspace engine", why_not)
    from vpnlab_agent.dataplane.userspace import UserspaceEngine

    return UserspaceEngine(route_src=route_src, **options)


if __name__ == "__main__":
    # {"error": null} where this namespace's kernel has ESP, else {"error": "why not"}: what host-side
    # code (tests, the orchestrator) asks, in a throwaway namespace, instead of a second probe.
    import json

    print(json.dumps({"error": esp_probe_error()}))
