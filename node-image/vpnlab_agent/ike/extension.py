"""How a feature plugs into IKE: the `Extension` base class and what the endpoint hands it.

Sans-I/O like the rest of the package: hooks get `now` and plain data, and act through the endpoint's
public API (`ExtensionApi`). See docs/extending.md for the walk-through and the mesh as an example.

What an extension sees is authenticated: payloads of IKE_AUTH (after the peer's AUTH verified),
CREATE_CHILD_SA and INFORMATIONAL. From IKE_SA_INIT, which nothing protects, it gets only the
RFC 5685 notifies (REDIRECT_SUPPORTED, REDIRECT, REDIRECTED_FROM) it lists in `init_notifies`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vpnlab_agent.config import PeerConfig
from vpnlab_agent.ike.codec import Notify, Payload
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.sa import ChildSA

# The only notifies an extension may read from IKE_SA_INIT (RFC 5685 puts them there, unprotected).
INIT_NOTIFIES = frozenset({NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECT, NotifyType.REDIRECTED_FROM})


@dataclass(frozen=True)
class SaView:
    """Read-only view of one IKE SA, as extensions see it."""

    peer: str | None  # configured peer name; None on a responder before IKE_AUTH
    initiator: bool  # we are the original initiator of this IKE SA
    state: str  # the session state's value: "init-sent", "half-open", "established", ...
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    spi_i: bytes
    spi_r: bytes
    vendor_ids: tuple[bytes, ...] = ()  # the peer's Vendor IDs, from authenticated messages only
    notifies: tuple[int, ...] = ()  # status notify types the peer sent in IKE_SA_INIT and IKE_AUTH
    nonce_i: bytes = b""  # the initiator's nonce Ni (an RFC 5685 REDIRECT in IKE_SA_INIT echoes it)

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r


@dataclass(frozen=True)
class MessageInfo:
    """Which message a `payloads` or `received` call is about."""

    exchange: int  # ExchangeType
    response: bool  # False: a request
    child: ChildInfo | None = None  # IKE_AUTH and CREATE_CHILD_SA that create or rekey a child SA


@dataclass(frozen=True)
class ChildInfo:
    """A child SA being negotiated: what `child_meta` and the child exchanges' hooks see."""

    local_ts: tuple[str, ...]  # offered (request) or narrowed (response, child_meta)
    remote_ts: tuple[str, ...]
    rekey_of: ChildSA | None = None  # the child SA a rekey replaces
    peer_payloads: tuple[Payload, ...] = ()  # the peer's payloads of this exchange (child_meta only)


@dataclass(frozen=True)
class ChildMeta:
    """Per-child metadata an extension sets; None leaves a field as it is (default, or the rekeyed
    child's value). Carried into ChildSA and so to both engines."""

    preference: int | None = None  # higher wins among SAs whose selectors cover a destination
    context: str | None = None  # routing context (HSVPN)
    mark: int | None = None  # XFRM mark
    if_id: int | None = None  # XFRM interface id
    trailer: Any = None  # how the ESP trailer is built and read (esp.trailer)

    def apply(self, sa: ChildSA) -> ChildSA:
        have = {f.name for f in dataclasses.fields(sa)}
        changes = {k: v for k, v in self.set_fields().items() if k in have}
        return dataclasses.replace(sa, **changes) if changes else sa

    def set_fields(self) -> dict[str, Any]:
        # not dataclasses.asdict: that would turn a trailer object into a dict
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


# --- admission of a new IKE_SA_INIT (responder, before any state is kept) -------------------


@dataclass(frozen=True)
class InitRequest:
    """A new IKE_SA_INIT request that passed the syntax, proposal and KE checks."""

    addr: tuple[str, int]
    local_port: int
    spi_i: bytes
    nonce: bytes  # Ni (RFC 5685 REDIRECT in IKE_SA_INIT carries it back)
    notifies: tuple[Notify, ...]  # COOKIE and the RFC 5685 notifies of the request, if any
    half_open: int  # half-open SAs we hold now
    established: int  # established IKE SAs we hold now
    cookie_first: bool = False  # notifies[0] is a COOKIE that came first in the request (RFC 7296 §2.6)


@dataclass(frozen=True)
class Answer:
    """Go on: answer the request and keep a half-open SA."""


@dataclass(frozen=True)
class AskCookie:
    """Answer with COOKIE (RFC 7296 §2.6), keep nothing."""

    cookie: bytes


@dataclass(frozen=True)
class ReplyWith:
    """Answer with these notifies only (e.g. RFC 5685 REDIRECT), keep nothing."""

    notifies: tuple[Notify, ...]


Admission = Answer | AskCookie | ReplyWith


class AdmissionPolicy(Protocol):
    def admit(self, req: InitRequest, now: float) -> Admission | None:
        """A decision, or None to let the next policy decide (the last word is Answer)."""


# --- what an extension may call ----------------------------------------------------------------


class ExtensionApi(Protocol):
    """The endpoint's public API, as an extension uses it (IkeEndpoint implements it)."""

    def send_notify(self, peer: str, notify_type: int, data: bytes, now: float) -> int: ...

    def send_informational(self, peer: str, payloads: Sequence[Payload], now: float) -> int: ...

    def connect(self, peer_name: str, now: float, *, address: str | None = None,
                init_payloads: Sequence[Payload] = (), port: int = 500) -> None: ...

    def reconnect(self, peer: str, address: str, now: float, *, init_payloads: Sequence[Payload] = (),
                  reason: str = "redirected") -> None: ...

    def close(self, sa: SaView, now: float, reason: str) -> None: ...

    def add_peer(self, peer: PeerConfig, now: float | None = None) -> None: ...

    def remove_peer(self, name: str, now: float) -> None: ...

    def is_dynamic(self, name: str) -> bool: ...

    def is_up(self, peer: str) -> bool: ...

    def sas(self) -> list[SaView]: ...


class Extension:
    """Base class with no-op hooks; override what the feature needs.

    Hooks run inside the endpoint's input handling: they must not block, and must not raise on
    peer input (an exception is counted in `internal_errors` and the hook's result ignored).
    """

    name = "extension"
    vendor_ids: tuple[bytes, ...] = ()  # announced in our IKE_SA_INIT and IKE_AUTH messages
    init_notifies: frozenset[int] = frozenset()  # subset of INIT_NOTIFIES wanted from IKE_SA_INIT

    def attach(self, api: ExtensionApi) -> None:
        """Called once by the endpoint the extension is given to."""
        self.api = api

    def payloads(self, sa: SaView, msg: MessageInfo) -> list[Payload]:
        """Extra payloads (Notify, VendorId) for a message we are about to send."""
        return []

    def received(self, sa: SaView, msg: MessageInfo, payloads: list[Payload], now: float) -> None:
        """The peer's payloads of one message (authenticated; see the module docstring)."""

    def admit_init(self, req: InitRequest, now: float) -> Admission | None:
        """Responder, new IKE_SA_INIT: see AdmissionPolicy."""
        return None

    def admit_auth(self, sa: SaView, payloads: list[Payload], now: float) -> list[Notify] | None:
        """Responder, IKE_AUTH verified but the IKE SA not yet up: notifies to answer with instead
        of establishing it (RFC 5685 REDIRECT in IKE_AUTH); the SA is then closed without IkeSAUp."""
        return None

    def hold_auth(self, sa: SaView, identity: str, now: float) -> bool:
        """Responder, IKE_AUTH from an identity that matches no peer: True to hold the request
        unanswered (at most ikesa.HOLD_AUTH_S) because this extension may add that peer any moment
        (the mesh: a shortcut it asked the hub for). `add_peer` then answers the held request."""
        return False

    def child_meta(self, sa: SaView, child: ChildInfo) -> ChildMeta | None:
        """Metadata for a child SA being created (both sides, IKE_AUTH and CREATE_CHILD_SA)."""
        return None

    def ike_rekeyed(self, old: SaView, new: SaView, now: float) -> None:
        """Both sides: IKE SA `new` replaced `old` in an IKE SA rekey (RFC 7296 §2.18) and took over
        its children; state kept per IKE SA moves over. `old` lingers for its DELETE, then goes
        (`ike_closed`)."""

    def ike_closed(self, sa: SaView, now: float) -> None:
        """Any IKE SA the endpoint forgets (deleted, failed, timed out, rekeyed away): let go of
        what was kept for it. The IkeSADown event is for the owner, and not sent for every one."""


@dataclass
class Extensions:
    """The endpoint's extensions, called in order; one place that guards against their bugs."""

    items: list[Extension] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    on_error: Callable[[str], None] | None = None

    def _guard(self, ext: Extension, hook: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - an extension's bug must not take IKE down
            text = f"extension {ext.name}: {hook}: {type(e).__name__}: {e}"
            if self.on_error is not None:
                self.on_error(text)
            return None

    @property
    def vendor_ids(self) -> tuple[bytes, ...]:
        return tuple(v for e in self.items for v in e.vendor_ids)

    def wanted_init_notifies(self) -> frozenset[int]:
        out: set[int] = set()
        for e in self.items:
            out |= set(e.init_notifies) & INIT_NOTIFIES
        return frozenset(out)

    def payloads(self, sa: SaView, msg: MessageInfo) -> list[Payload]:
        out: list[Payload] = []
        for e in self.items:
            out += self._guard(e, "payloads", lambda e=e: e.payloads(sa, msg)) or []
        return out

    def received(self, sa: SaView, msg: MessageInfo, payloads: list[Payload], now: float) -> None:
        for e in self.items:
            if msg.exchange == ExchangeType.IKE_SA_INIT:  # only the RFC 5685 notifies it asked for
                wanted = set(e.init_notifies) & INIT_NOTIFIES
                mine = [p for p in payloads if isinstance(p, Notify) and p.notify_type in wanted]
                if not mine:
                    continue
                self._guard(e, "received", lambda e=e, mine=mine: e.received(sa, msg, mine, now))
            else:
                self._guard(e, "received", lambda e=e: e.received(sa, msg, list(payloads), now))

    def admit(self, req: InitRequest, now: float) -> Admission | None:
        """The extensions as one AdmissionPolicy."""
        for e in self.items:
            got = self._guard(e, "admit_init", lambda e=e: e.admit_init(req, now))
            if got is not None:
                return got
        return None

    def admit_auth(self, sa: SaView, payloads: list[Payload], now: float) -> list[Notify] | None:
        for e in self.items:
            got = self._guard(e, "admit_auth", lambda e=e: e.admit_auth(sa, list(payloads), now))
            if got:
                return list(got)
        return None

    def hold_auth(self, sa: SaView, identity: str, now: float) -> bool:
        return any(self._guard(e, "hold_auth", lambda e=e: e.hold_auth(sa, identity, now)) for e in self.items)

    def ike_rekeyed(self, old: SaView, new: SaView, now: float) -> None:
        for e in self.items:
            self._guard(e, "ike_rekeyed", lambda e=e: e.ike_rekeyed(old, new, now))

    def ike_closed(self, sa: SaView, now: float) -> None:
        for e in self.items:
            self._guard(e, "ike_closed", lambda e=e: e.ike_closed(sa, now))

    def child_meta(self, sa: SaView, child: ChildInfo) -> ChildMeta | None:
        merged: dict[str, Any] = {}
        for e in self.items:
            got = self._guard(e, "child_meta", lambda e=e: e.child_meta(sa, child))
            if got is not None:
                merged.update(got.set_fields())
        return ChildMeta(**merged) if merged else None
