"""Image inputs: package list, apt sources → mirror, content-hash tags, build context."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vpnlab import image
from vpnlab.errors import ImageError


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "node-image"
    (root / "vpnlab_agent" / "__pycache__").mkdir(parents=True)
    (root / "packages.txt").write_text("# comment\npython3\n\niproute2  # trailing comment\n")
    (root / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    (root / "vpnlab_agent" / "__init__.py").write_text("x = 1\n")
    (root / "vpnlab_agent" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_read_packages_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    assert image.read_packages(_tree(tmp_path) / "packages.txt") == ["python3", "iproute2"]


def test_read_packages_rejects_garbage_with_line_number(tmp_path: Path) -> None:
    p = tmp_path / "packages.txt"
    p.write_text("python3\nrm -rf /\n")
    with pytest.raises(ImageError, match=r"packages.txt:2: not a Debian package name"):
        image.read_packages(p)


def test_repo_package_list_has_what_the_agent_needs() -> None:
    names = image.read_packages()
    for needed in ("python3", "python3-cryptography", "python3-pyroute2", "python3-jinja2",
                   "iproute2", "charon-systemd", "libcharon-extra-plugins"):
        assert needed in names


def test_node_tag_follows_content_and_ignores_caches(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = image.node_tag(root)
    assert first.startswith("vpnlab-node:") and len(first.split(":")[1]) == 12
    (root / "vpnlab_agent" / "__pycache__" / "other.pyc").write_bytes(b"more junk")
    assert image.node_tag(root) == first
    (root / "vpnlab_agent" / "__init__.py").write_text("x = 2\n")
    assert image.node_tag(root) != first


def test_node_tag_sees_renames(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = image.node_tag(root)
    (root / "vpnlab_agent" / "__init__.py").rename(root / "vpnlab_agent" / "main.py")
    assert image.node_tag(root) != first


def test_base_tag_follows_packages_only(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = image.base_tag(root)
    (root / "vpnlab_agent" / "__init__.py").write_text("changed\n")
    assert image.base_tag(root) == first
    (root / "packages.txt").write_text("python3\n")
    assert image.base_tag(root) != first


def test_build_context_is_exactly_the_hashed_files(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with tarfile.open(fileobj=image.build_context(image.context_entries(root))) as tar:
        names = sorted(tar.getnames())
    assert names == ["Dockerfile", "packages.txt", "vpnlab_agent/__init__.py"]


def test_one_line_sources() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
    )
    assert image.parse_one_line_sources(text) == [
        image.AptSource("http://mirror.example/debian", ("bookworm",), ("main", "contrib"))
    ]


def test_deb822_sources_with_disabled_and_continuation() -> None:
    text = (
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://a.example/debian\n  http://b.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n"
    )
    got = image.parse_deb822_sources(text)
    assert [s.uri for s in got] == ["http://a.example/debian", "http://b.example/debian"]
    assert got[0].suites == ("bookworm", "bookworm-updates")


def test_mirror_is_the_source_serving_bookworm_main(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VPNLAB_DEBIAN_MIRROR", raising=False)
    sources = [
        image.AptSource("http://security.example/debian-security", ("bookworm-security",), ("main",)),
        image.AptSource("http://other.example/apt", ("cloud-sdk-bookworm",), ("main",)),
        image.AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates"), ("main",)),
    ]
    assert image.debian_mirror(sources) == "http://mirror.example/debian"
    with pytest.raises(ImageError, match="no Debian 'bookworm' mirror"):
        image.debian_mirror(sources[:2])
    monkeypatch.setenv("VPNLAB_DEBIAN_MIRROR", "http://override.example/debian")
    assert image.debian_mirror([]) == "http://override.example/debian"


def test_host_sources_are_read_from_both_formats(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    (d / "x.sources").write_text("Types: deb\nURIs: http://two.example/debian\nSuites: bookworm\n")
    (d / "y.list.disabled").write_text("deb http://three.example/debian bookworm main\n")
    got = image.host_apt_sources((tmp_path / "sources.list", d))
    assert [s.uri for s in got] == ["http://one.example/debian", "http://two.example/debian"]


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def add_task(self, description: str, total: float | None = None, **fields: object) -> int:
        self.events.append(("add", {"description": description, "total": total}))
        return len(self.events)

    def update(self, task_id: object, **fields: object) -> None:
        self.events.append(("update", dict(fields)))


def test_reporter_feeds_a_progress_sink_and_is_silent_without_one() -> None:
    sink = _Sink()
    r = image._Reporter(sink)
    r.start("debootstrap", total=None)
    r.update(description="debootstrap: unpacking libc6")
    assert sink.events == [("add", {"description": "debootstrap", "total": None}),
                           ("update", {"description": "debootstrap: unpacking libc6"})]
    image._Reporter(None).update(description="nothing happens")


def test_debootstrap_step_lines_are_recognised() -> None:
    m = image._DEBOOTSTRAP_STEP.match("I: Unpacking libc6...")
    assert m and m.group(1) == "Unpacking" and m.group(2).startswith("libc6")
    assert image._DEBOOTSTRAP_STEP.match("W: Failure while configuring") is None
