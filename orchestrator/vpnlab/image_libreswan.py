"""The libreswan image, built on demand like the node image: a debootstrapped base from
libreswan-image/packages.txt, then libreswan-image/Dockerfile adds the router agent (node-image's
vpnlab_agent, unchanged) and vpnlab_libreswan, which runs pluto under it.

libreswan's Debian package conflicts with strongSwan's, so it cannot join the node image. Only a lab
with an `implementation: libreswan` node builds it (lab.deploy_lab asks for the images its
ContainerSpecs name); its tag hashes every file that goes into it, the agent included, so it is
rebuilt when either changes and never otherwise.

    vpnlab-base:<hash of libreswan-image/packages.txt>     debootstrap, as image.build_base
    vpnlab-libreswan:<hash of the build context>           libreswan-image/Dockerfile
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vpnlab import image
from vpnlab.errors import ImageError
from vpnlab.progress import ProgressSink

LIBRESWAN_IMAGE_DIR = Path(__file__).resolve().parents[2] / "libreswan-image"
REPO = "vpnlab-libreswan"


def context_files() -> list[tuple[str, Path]]:
    """(name in the build context, file): libreswan-image/ as it is, plus the agent package."""
    agent = [("vpnlab_agent/" + name, p) for name, p in image.context_entries(image.NODE_IMAGE_DIR / "vpnlab_agent")]
    return sorted(image.context_entries(LIBRESWAN_IMAGE_DIR) + agent)


def base_tag() -> str:
    return image.base_tag(LIBRESWAN_IMAGE_DIR)


def libreswan_tag() -> str:
    return f"{REPO}:{image.context_digest(context_files())}"


def ensure_libreswan_image(force: bool = False, progress: ProgressSink | None = None) -> str:
    tag, base = libreswan_tag(), base_tag()
    client = image._client()
    if not force and image._has_image(client, tag):
        return tag
    report = image._Reporter(progress)
    with image._build_lock():
        if not force and image._has_image(client, tag):
            return tag
        if force or not image._has_image(client, base):
            image.build_base(client, base, report, root=LIBRESWAN_IMAGE_DIR)
        image.build_node(client, tag, base, report, context=image.build_context(context_files()), kind="libreswan")
    return tag


def ensure_images(tags: Iterable[str], progress: ProgressSink | None = None) -> None:
    """Build the extra images some nodes' ContainerSpecs name (today only libreswan's)."""
    for tag in sorted(set(tags)):
        if tag != libreswan_tag():
            raise ImageError(f"no way to build image {tag} (only {libreswan_tag()} is built on demand)")
        ensure_libreswan_image(progress=progress)
