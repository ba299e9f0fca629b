"""The YAML examples in README.md and docs/topology.md are real, loadable topologies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vpnlab.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]


def first_yaml_block(path: Path) -> str:
    match = re.search(r"```yaml\n(.*?)```", path.read_text(), re.S)
    assert match, f"no yaml block in {path}"
    return match.group(1)


@pytest.mark.parametrize("doc", ["README.md", "docs/topology.md"])
def test_example_loads(doc: str, tmp_path: Path) -> None:
    p = tmp_path / "example.yml"
    p.write_text(first_yaml_block(ROOT / doc))
    lab = load_topology(p)
    br2 = lab.node("br2")
    assert str(br2.public_address) == "198.51.100.30"
    assert br2.implementation == "strongswan"
    assert [h.name for h in lab.hosts if h.router == "br2"][:2] == ["pc1", "pc2"]


def test_minimal_table_in_docs_matches_planning() -> None:
    lab = load_topology(ROOT / "topologies/minimal.yml")
    text = (ROOT / "docs/topology.md").read_text()
    for router in lab.routers:
        lan = router.lan_subnets[0]
        (host,) = [h for h in lab.hosts if h.router == router.name]
        row = (
            f"| {router.name} | {router.interfaces[0].address} | {lan} (lan0 {router.interfaces[1].address.ip}) "
            f"| {host.name} {host.interfaces[0].address.ip} |"
        )
        assert row in text
