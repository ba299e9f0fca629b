"""The node image, built here from Debian packages: no container registry is needed or used.

Two layers, each tagged with a content hash so that it is rebuilt only when its inputs change:

    vpnlab-base:<hash of packages.txt>   debootstrap --variant=minbase --include=<packages> bookworm,
                                          then `tar -c | docker import`
    vpnlab-node:<hash of node-image/>    node-image/Dockerfile FROM the base: adds the router agent

The Debian mirror is read from the host's own apt sources at build time, so no registry host name
lives in the repository. `VPNLAB_DEBIAN_MIRROR` overrides it. Only the `bookworm` suite is used
(no -updates/-security), and the base tag hashes the package list, not the mirror's contents: two
machines may hold different point-release builds under one tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpnlab.errors import ImageError
from vpnlab.progress import ProgressSink

NODE_IMAGE_DIR = Path(__file__).resolve().parents[2] / "node-image"
BASE_REPO = "vpnlab-base"
NODE_REPO = "vpnlab-node"
SUITE = "bookworm"
LABEL = "vpnlab.image"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
LOCK_PATH = Path("/run/lock/vpnlab-image.lock")
LOG_DIR = Path("/var/log") if os.access("/var/log", os.W_OK) else Path(tempfile.gettempdir())
DEBOOTSTRAP_TIMEOUT_S = 1200
_HASH_LEN = 12
_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


# ---------------------------------------------------------------- inputs and tags


def read_packages(path: Path | None = None) -> list[str]:
    path = path or NODE_IMAGE_DIR / "packages.txt"
    names: list[str] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", line):
            raise ImageError(f"{path}:{lineno}: not a Debian package name: {line!r}")
        names.append(line)
    if not names:
        raise ImageError(f"{path}: no packages listed")
    return names


def image_files(root: Path | None = None) -> list[Path]:
    """The files that make up the node image's build context, sorted, without caches."""
    root = root or NODE_IMAGE_DIR
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and not _SKIP_PARTS.intersection(p.relative_to(root).parts)
        and p.suffix not in (".pyc", ".pyo")
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def base_tag(root: Path | None = None) -> str:
    root = root or NODE_IMAGE_DIR
    digest = hashlib.sha256(SUITE.encode() + b"\0" + (root / "packages.txt").read_bytes())
    return f"{BASE_REPO}:{digest.hexdigest()[:_HASH_LEN]}"


def context_entries(root: Path) -> list[tuple[str, Path]]:
    """(name in the build context, file) for every file of image_files(root)."""
    return [(p.relative_to(root).as_posix(), p) for p in image_files(root)]


def context_digest(entries: list[tuple[str, Path]]) -> str:
    """Hash of every name and its bytes: the part of an image tag that says what was built."""
    digest = hashlib.sha256()
    for name, path in entries:
        rel, data = name.encode(), path.read_bytes()
        digest.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:_HASH_LEN]


def node_tag(root: Path | None = None) -> str:
    """Hash of every path and its bytes under node-image/ (packages.txt included, so a new base
    always means a new node image)."""
    return f"{NODE_REPO}:{context_digest(context_entries(root or NODE_IMAGE_DIR))}"


# ---------------------------------------------------------------- apt sources → mirror


def parse_one_line_sources(text: str) -> list[AptSource]:
    """`deb [opts] URI suite [components...]` lines (sources.list, *.list)."""
    found: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=... signed-by=...]
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            found.append(AptSource(words[1], (words[2],), tuple(words[3:])))
    return found


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 paragraphs (*.sources): Types, URIs, Suites, Components, Enabled."""
    found: list[AptSource] = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in para.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:  # continuation line
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        comps = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri, suites, comps))
    return found


def host_apt_sources(locations: tuple[Path, ...] = APT_SOURCES) -> list[AptSource]:
    sources: list[AptSource] = []
    for loc in locations:
        paths = [loc] if loc.is_file() else sorted(loc.glob("*")) if loc.is_dir() else []
        for path in paths:
            if path.name.endswith(".list") or path.name == "sources.list":
                sources += parse_one_line_sources(path.read_text(encoding="utf-8", errors="replace"))
            elif path.name.endswith(".sources"):
                sources += parse_deb822_sources(path.read_text(encoding="utf-8", errors="replace"))
    return sources


def debian_mirror(sources: list[AptSource] | None = None, suite: str = SUITE) -> str:
    """The first host source that serves `suite` with `main`: that is a Debian mirror."""
    if env := os.environ.get("VPNLAB_DEBIAN_MIRROR"):
        return env
    sources = host_apt_sources() if sources is None else sources
    for src in sources:
        if suite in src.suites and (not src.components or "main" in src.components):
            return src.uri
    raise ImageError(
        f"no Debian '{suite}' mirror in the host's apt sources "
        f"(/etc/apt/sources.list, /etc/apt/sources.list.d/): add one or set VPNLAB_DEBIAN_MIRROR"
    )


# ---------------------------------------------------------------- docker


def _client() -> Any:
    import docker  # here, so that `import vpnlab.image` stays cheap for tag-only users

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # DockerException, requests errors: all mean "no engine"
        raise ImageError(f"no Docker engine reachable: {exc}; run `make docker`") from exc
    return client


def _has_image(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time on this machine: parallel test sessions would otherwise both build."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Reporter:
    """Turns build steps into progress-task updates; silent without a sink."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self.sink = sink
        self.task: Any = None

    def start(self, description: str, total: float | None = None) -> None:
        if self.sink is not None:
            self.task = self.sink.add_task(description, total=total)

    def update(self, **fields: Any) -> None:
        if self.sink is not None and self.task is not None:
            self.sink.update(self.task, **fields)


# ---------------------------------------------------------------- base image


_DEBOOTSTRAP_STEP = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring|Installing)\s+(\S+)")


def _unmount_below(root: Path) -> None:
    """debootstrap mounts proc/sys inside its target; a failed run can leave them mounted."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_tree(root: Path) -> None:
    _unmount_below(root)
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as f:
        if any(line.split()[1].startswith(prefix) for line in f):
            raise ImageError(f"{root} still has mounts below it; not removing it")
    shutil.rmtree(root, ignore_errors=True)


def _debootstrap(target: Path, packages: list[str], mirror: str, log_path: Path, report: _Reporter) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed: run `make docker` (scripts/setup-host.sh)")
    cmd = [
        "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
        SUITE, str(target), mirror,
    ]  # fmt: skip
    # debootstrap never says how many steps are coming: once it stops downloading we know the
    # package count N, and retrieve+validate+unpack+configure (+ extract for about half) is ~4.5 N.
    retrieved, steps, total = 0, 0, None
    last = ""
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )  # fmt: skip
        # Bound the whole run: a stalled mirror must not hang `make test` for ever.
        timer = threading.Timer(DEBOOTSTRAP_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip()
                if line:
                    last = line
                m = _DEBOOTSTRAP_STEP.match(line)
                if m:
                    step, pkg = m.groups()
                    steps += 1
                    if step == "Retrieving":
                        retrieved += 1
                    elif total is None:
                        total = int(retrieved * 4.5)
                    report.update(description=f"debootstrap: {step.lower()} {pkg.rstrip('.')}",
                                  total=total, completed=min(steps, total or steps))
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        inner = target / "debootstrap" / "debootstrap.log"  # the details; gone with the tree
        if inner.is_file():
            with open(log_path, "a", encoding="utf-8") as log:
                log.write("\n--- " + str(inner) + "\n" + inner.read_text(encoding="utf-8", errors="replace"))
            log_hint = f"{log_path} (debootstrap's own log appended)"
        else:
            log_hint = str(log_path)
        why = "timed out" if rc == -9 else "failed"
        raise ImageError(f"debootstrap {why}: {last}; see {log_hint}")


def _slim(target: Path) -> None:
    """Drop what a container never uses: downloaded .debs, apt lists, docs, man pages."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        d = target / sub
        if d.is_dir():
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                elif child.name != "lock":
                    child.unlink(missing_ok=True)


def _import_rootfs(client: Any, target: Path, tag: str, report: _Reporter) -> None:
    repo, _, version = tag.partition(":")
    report.update(description=f"docker import → {tag}")
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(target), "-c", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert tar.stdout is not None
        result = client.api.import_image_from_stream(
            tar.stdout, repository=repo, tag=version,
            changes=[f"LABEL {LABEL}=base", 'CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"],
        )  # fmt: skip
    except Exception as exc:
        tar.kill()
        raise ImageError(f"docker import of {tag} failed: {exc}") from exc
    finally:
        _, err = tar.communicate()
    if tar.returncode != 0:
        raise ImageError(f"tar of the debootstrap tree failed: {err.decode(errors='replace').strip()}")
    if "error" in str(result).lower() and not _has_image(client, tag):
        raise ImageError(f"docker import of {tag} failed: {str(result).strip()[:200]}")


def build_base(client: Any, tag: str, report: _Reporter, root: Path | None = None) -> None:
    packages = read_packages((root or NODE_IMAGE_DIR) / "packages.txt")
    mirror = debian_mirror()
    log_path = LOG_DIR / "vpnlab-debootstrap.log"
    report.start(f"debootstrap {SUITE} ({len(packages)} packages)")
    # Under /var/tmp, not /tmp: the tree is a few hundred MB and /tmp may be a small tmpfs.
    workdir = Path(tempfile.mkdtemp(prefix="vpnlab-rootfs-", dir="/var/tmp"))
    try:
        target = workdir / "rootfs"
        _debootstrap(target, packages, mirror, log_path, report)
        _slim(target)
        _import_rootfs(client, target, tag, report)
    finally:
        _remove_tree(workdir)
    report.update(description=f"base image {tag}", total=1, completed=1)


# ---------------------------------------------------------------- node image


def build_context(entries: list[tuple[str, Path]]) -> io.BytesIO:
    """Exactly the hashed files, as a tar: what is built is what the tag names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in entries:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0  # stable layers: Docker's cache keys include mtimes
            with open(path, "rb") as f:
                tar.addfile(info, f)
    buf.seek(0)
    return buf


def build_node(client: Any, tag: str, base: str, report: _Reporter, root: Path | None = None,
               context: io.BytesIO | None = None, kind: str = "node") -> None:
    """`context`: another build context than root's files (the libreswan image, image_libreswan.py)."""
    root = root or NODE_IMAGE_DIR
    report.start(f"{kind} image {tag}", total=None)
    last = ""
    try:
        stream = client.api.build(
            fileobj=context or build_context(context_entries(root)), custom_context=True, tag=tag, rm=True, forcerm=True,
            decode=True, buildargs={"BASE_IMAGE": base}, labels={LABEL: kind},
            network_mode="none",
        )  # fmt: skip
        for chunk in stream:
            if "error" in chunk:
                raise ImageError(f"docker build of {tag} failed: {str(chunk['error']).strip()}")
            text = str(chunk.get("stream", "")).strip()
            if not text:
                continue
            last = text
            m = re.match(r"Step (\d+)/(\d+) : (.*)", text)
            if m:
                done, total, what = int(m[1]), int(m[2]), m[3]
                report.update(description=f"docker build: {what[:60]}", total=total, completed=done - 1)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"docker build of {tag} failed: {exc}; last output: {last}") from exc
    if not _has_image(client, tag):
        raise ImageError(f"docker build of {tag} produced no image; last output: {last}")
    report.update(description=f"{kind} image {tag}", completed=1, total=1)


# ---------------------------------------------------------------- entry point


def ensure_image(force: bool = False, progress: ProgressSink | None = None) -> str:
    """Return the node image tag, building the base and/or node layer only if missing (or force).

    progress: a rich.progress.Progress (or anything with add_task/update); the caller displays it.
    """
    base, node = base_tag(), node_tag()
    client = _client()
    if not force and _has_image(client, node):
        return node
    report = _Reporter(progress)
    with _build_lock():
        # Another process may have built it while we waited for the lock.
        if not force and _has_image(client, node):
            return node
        if force or not _has_image(client, base):
            build_base(client, base, report)
        build_node(client, node, base, report)
    return node


def remove_images(keep_current: bool = True) -> list[str]:
    """Remove vpnlab images (all, or all but the current tags); returns the removed tags.
    Images that a container still uses are left alone."""
    import docker.errors

    client = _client()
    keep = {base_tag(), node_tag()} if keep_current else set()
    removed: list[str] = []
    # Node images first: they sit on top of a base. The libreswan image (image_libreswan.py) only
    # when nothing is kept; its base, while it stands on it, refuses to go (APIError below).
    for kind in ("node", "base") if keep_current else ("node", "libreswan", "base"):
        for image in client.images.list(filters={"label": f"{LABEL}={kind}"}):
            for tag in image.tags:
                if tag in keep:
                    continue
                try:
                    client.images.remove(tag, noprune=False)
                except docker.errors.APIError:  # in use (a lab is running) or already gone
                    continue
                removed.append(tag)
    return removed
