"""The lab PKI files of the node config as the IKE endpoint's Credentials, and the wall clock that
checks certificate validity: the file and clock side of ike/certs.py, which does neither."""

from __future__ import annotations

import datetime

from vpnlab_agent.config import IkeConfig
from vpnlab_agent.ike.certs import CertError, Credentials
from vpnlab_agent.ike.endpoint import IkeError

MAX_PEM_BYTES = 1 << 20


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_credentials(ike: IkeConfig) -> Credentials | None:
    """The PEM files the orchestrator put in (vpnlab.pki): the CA, ours with auth cert, and the
    certificate the lab issued to each peer that authenticates with one."""
    if ike.pki is None:
        return None

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read(MAX_PEM_BYTES)

    try:
        own = ike.auth == "cert"
        return Credentials.from_pem(
            read(ike.pki.ca_file),
            read(ike.pki.cert_file) if own else None,
            read(ike.pki.key_file) if own else None,
            {p.name: read(p.cert_file) for p in ike.peers if p.auth == "cert" and p.cert_file},
        )
    except (OSError, ValueError, CertError) as exc:
        raise IkeError(f"cannot load the lab certificates: {exc}") from None
