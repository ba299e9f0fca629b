"""Proposal strings of the node config as swanctl.conf values.

A strongSwan node takes the same proposal vocabulary as our agent (vpnlab_agent.ike.proposals), so
one topology means the same suites whichever implementation a router runs, and a typo fails at
render time with the list of what is supported instead of a proposal charon silently ignores.
"""

from __future__ import annotations

from vpnlab_agent.ike.proposals import canonical


class ProposalError(ValueError):
    """A proposal string has a token we cannot map; one-line message."""


def _map(proposal: str, *, ike: bool) -> str:
    try:
        return canonical(proposal, esp=not ike)
    except ValueError as exc:
        raise ProposalError(str(exc)) from None


def ike_proposals(proposals: tuple[str, ...] | list[str]) -> str:
    """strongSwan `proposals = ...` value (comma-separated, order kept)."""
    if not proposals:
        raise ProposalError("no IKE proposals")
    return ",".join(_map(p, ike=True) for p in proposals)


def esp_proposals(proposals: tuple[str, ...] | list[str]) -> str:
    if not proposals:
        raise ProposalError("no ESP proposals")
    return ",".join(_map(p, ike=False) for p in proposals)
