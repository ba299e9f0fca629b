"""vpnlab router agent: runs in every router container; speaks IKEv2 and ESP itself."""

__version__ = "0.1.0"
IMPLEMENTATION_NAME = "vpnlab-agent"
