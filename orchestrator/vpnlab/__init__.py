"""vpnlab: container lab for multi-site IPsec VPN designs (host side)."""

__version__ = "0.1.0"
