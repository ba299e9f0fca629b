"""The libreswan image's tag hashes libreswan-image/ and the agent it copies, nothing else; its
build context holds exactly those files."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from vpnlab import image, image_libreswan


@pytest.fixture
def trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    own, node = tmp_path / "libreswan-image", tmp_path / "node-image"
    for path, text in {own / "packages.txt": "libreswan\n", own / "Dockerfile": "FROM x\n",
                       own / "vpnlab_libreswan" / "service.py": "s = 1\n",
                       node / "packages.txt": "strongswan-swanctl\n",
                       node / "vpnlab_agent" / "agent.py": "a = 1\n"}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(image_libreswan, "LIBRESWAN_IMAGE_DIR", own)
    monkeypatch.setattr(image, "NODE_IMAGE_DIR", node)
    return own, node


def test_tag_follows_its_own_files_and_the_agent_only(trees: tuple[Path, Path]) -> None:
    own, node = trees
    first = image_libreswan.libreswan_tag()
    assert first.startswith("vpnlab-libreswan:")
    (node / "packages.txt").write_text("strongswan-swanctl\ncharon-systemd\n")  # the node image's base
    assert image_libreswan.libreswan_tag() == first
    (node / "vpnlab_agent" / "agent.py").write_text("a = 2\n")
    second = image_libreswan.libreswan_tag()
    assert second != first
    (own / "vpnlab_libreswan" / "service.py").write_text("s = 2\n")
    assert image_libreswan.libreswan_tag() != second
    assert image_libreswan.base_tag() == image.base_tag(own) != image.base_tag(node)


def test_build_context_is_the_hashed_files(trees: tuple[Path, Path]) -> None:
    with tarfile.open(fileobj=image.build_context(image_libreswan.context_files())) as tar:
        names = tar.getnames()
    assert names == ["Dockerfile", "packages.txt", "vpnlab_agent/agent.py", "vpnlab_libreswan/service.py"]


def test_only_its_own_tag_is_built_on_demand() -> None:
    with pytest.raises(image.ImageError, match="no way to build image vpnlab-other:1"):
        image_libreswan.ensure_images({"vpnlab-other:1"})
