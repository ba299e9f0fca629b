"""Routing contexts (HSVPN, docs/hsvpn.md): config, per-context routing, the three methods."""
