"""Topology files: raw YAML schema (schema.py) -> validated, planned, frozen Lab (model.py)."""

from vpnlab.topology.loader import load_topology
from vpnlab.topology.model import Lab, Node

__all__ = ["Lab", "Node", "load_topology"]
