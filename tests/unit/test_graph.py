"""Pictures of a lab: dot and mermaid text, png/svg through the real graphviz `dot`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vpnlab.errors import EnvironmentProblem, VpnlabError
from vpnlab.graph import fmt_from_suffix, render, tunnels
from vpnlab.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` is not installed")


@pytest.fixture(scope="module")
def lab():
    return load_topology(TOPOLOGIES / "hub-spoke.yml")


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("a.png", "png"), ("x/b.SVG", "svg"), ("c.dot", "dot"), ("c.gv", "dot"), ("d.mmd", "mermaid")],
)
def test_fmt_from_suffix(path: str, fmt: str) -> None:
    assert fmt_from_suffix(path) == fmt


@pytest.mark.parametrize(("path", "word"), [("x.bogus", "'.bogus'"), ("noext", "no file suffix")])
def test_fmt_from_suffix_refuses(path: str, word: str) -> None:
    with pytest.raises(VpnlabError, match=re.escape(word)):
        fmt_from_suffix(path)


def test_unknown_format(lab) -> None:
    with pytest.raises(VpnlabError, match="unknown graph format 'jpeg'"):
        render(lab, "jpeg")


def test_tunnels_of_the_star(lab) -> None:
    assert tunnels(lab) == [("hub", "br1"), ("hub", "br2"), ("hub", "br3")]


def test_dot_text_names_everything(lab) -> None:
    dot = render(lab, "dot").decode()
    assert dot.startswith('graph "hub-spoke" {')
    for text in ("internet", "198.51.100.0/24", "wan0 198.51.100.10", "10.3.0.0/24", "br3-h1", "10.3.0.10"):
        assert text in dot
    assert len(re.findall(r"style=dashed", dot)) == 3  # one tunnel per branch
    assert dot.count("subgraph") == 4  # one site per router


@needs_dot
def test_dot_text_is_valid_graphviz(lab) -> None:
    proc = subprocess.run(["dot", "-Tcanon"], input=render(lab, "dot"), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""  # no warnings either


@needs_dot
def test_png(lab) -> None:
    png = render(lab, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@needs_dot
def test_svg(lab) -> None:
    svg = render(lab, "svg").decode()
    assert "<svg" in svg and "br2&#45;h1" in svg and "198.51.100.13" in svg  # dot escapes "-"


def test_png_without_graphviz_says_install(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EnvironmentProblem, match="install graphviz"):
        render(lab, "png")


def test_mermaid(lab) -> None:
    mmd = render(lab, "mermaid").decode()
    lines = mmd.splitlines()
    assert "flowchart TB" in lines
    assert lines.count("  end") == 4
    assert "  n_hub -.-|\"IPsec\"| n_br1" in lines
    # linkStyle colours exactly the tunnel links: they are the last three links
    links = [line for line in lines if re.match(r"^  \S+ (---|-\.-)", line)]
    style = next(line for line in lines if line.startswith("  linkStyle"))
    idx = [int(i) for i in style.split()[1].split(",")]
    assert [links[i] for i in idx] == [line for line in links if "-.-" in line]


@needs_dot
@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_topology_renders(path: Path) -> None:
    assert render(load_topology(path), "svg").lstrip().startswith(b"<?xml")
