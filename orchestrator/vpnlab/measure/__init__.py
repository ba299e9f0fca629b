"""Measurements on running labs: `vpnlab measure ...` (hub traffic with and without Advanced Mesh VPN)."""
