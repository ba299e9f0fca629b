"""Topology files: raw YAML schema (schema.py) -> validated, planned, frozen Lab (model.py)."""

from vpnlab.topology.loader import check_supported, load_topology
from vpnlab.topology.model import Lab, Node

__all__ = ["Lab", "Node", "check_supported", "load_topology"]
