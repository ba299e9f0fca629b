"""NAT devices: the nftables rules for a device's type and mapping timeout, and the service that
loads them and reports the device's live mappings (conntrack)."""
