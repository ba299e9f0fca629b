"""A newer user-mode Linux for hosts whose CPU Debian 12's cannot boot on.

Debian 12's UML 6.1 panics at boot on CPUs with a large XSAVE area (a Xeon with AMX: "ptrace set fp
regs failed, errno = 14"); the 7.x kernels of Debian unstable boot there. This fetches unstable's
user-mode-linux and the glibc it was linked against from the host's own Debian mirror, checks both
against the suite's signed index (gpgv and Debian's archive keyring), unpacks them under
/var/cache/vpnlab/uml/<version>/ and points the kernel at that glibc with patchelf, so that it runs
on this host as an ordinary process beside the host's own libraries. Nothing is installed system-wide.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import lzma
import re
import shutil
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("/var/cache/vpnlab/uml")
SUITE = "unstable"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGES = ("user-mode-linux", "libc6")
TIMEOUT_S = 300


class FetchError(Exception):
    """The newer kernel could not be fetched or prepared (one line: why)."""


@dataclass(frozen=True)
class Kernel:
    path: Path
    modules: Path  # holds one folder per kernel version, as /usr/lib/uml/modules


def cached() -> Kernel | None:
    """The newest kernel fetched before, if any (no network)."""
    ready = sorted(CACHE.glob("*/ready"), key=lambda p: p.stat().st_mtime)
    return _kernel_in(ready[-1].parent) if ready else None


def fetch(mirror: str) -> Kernel:
    """Unstable's user-mode Linux from `mirror` (a Debian mirror URL), fetched once and cached."""
    if (kernel := cached()) is not None:
        return kernel
    for tool in ("gpgv", "dpkg-deb", "patchelf"):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} is missing (scripts/setup-host.sh installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / ".lock"):
        if (kernel := cached()) is not None:  # another test session fetched it meanwhile
            return kernel
        return _fetch(mirror.rstrip("/"))


def _fetch(mirror: str) -> Kernel:
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    index_path = f"main/binary-{arch}/Packages.xz"
    release = _verified_release(_get(f"{mirror}/dists/{SUITE}/InRelease"))
    index = _get(f"{mirror}/dists/{SUITE}/{index_path}")
    _check_sha256(index, release.get(index_path), f"{SUITE}/{index_path}")
    stanzas = _stanzas(lzma.decompress(index).decode("utf-8", "replace"), PACKAGES)
    version = stanzas["user-mode-linux"]["Version"]
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        for name in PACKAGES:
            st = stanzas[name]
            deb = work / f"{name}.deb"
            deb.write_bytes(_get(f"{mirror}/{st['Filename']}"))
            _check_sha256(deb.read_bytes(), st.get("SHA256"), st["Filename"])
            subprocess.run(["dpkg-deb", "-x", str(deb), str(work / name)], check=True)
            deb.unlink()
        loaders = sorted((work / "libc6").glob("usr/lib/*/ld-linux*.so*"))
        if not loaders:
            raise FetchError(f"libc6 {stanzas['libc6']['Version']} holds no dynamic loader")
        kernel = work / "linux"
        shutil.copy2(work / "user-mode-linux" / "usr/bin/linux.uml", kernel)
        final = CACHE / re.sub(r"[^A-Za-z0-9.+~-]", "_", version)
        loader = final / loaders[0].relative_to(work)
        subprocess.run(["patchelf", "--set-interpreter", str(loader), "--set-rpath", str(loader.parent),
                        str(kernel)], check=True, capture_output=True)
        (work / "ready").write_text(f"user-mode-linux {version}, libc6 {stanzas['libc6']['Version']}\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        work.mkdir()  # for TemporaryDirectory's own cleanup
    return _kernel_in(final)


def _kernel_in(folder: Path) -> Kernel:
    return Kernel(folder / "linux", folder / "user-mode-linux" / "usr/lib/uml/modules")


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.read()
    except OSError as e:
        raise FetchError(f"cannot fetch {url}: {e}") from None


def _verified_release(signed: bytes) -> dict[str, str]:
    """The SHA256 lines of a signed InRelease (path -> digest), once gpgv accepts its signature."""
    with tempfile.NamedTemporaryFile(suffix=".InRelease") as f:
        f.write(signed)
        f.flush()
        done = subprocess.run(["gpgv", "--keyring", str(KEYRING), "--output", "-", f.name],
                              capture_output=True)
    if done.returncode != 0:
        raise FetchError(f"the {SUITE} InRelease signature does not verify with {KEYRING}")
    digests: dict[str, str] = {}
    in_sha256 = False
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
        elif in_sha256 and len(parts := line.split()) == 3:
            digests[parts[2]] = parts[0]
    return digests


def _check_sha256(data: bytes, expected: str | None, what: str) -> None:
    if expected is None or hashlib.sha256(data).hexdigest() != expected:
        raise FetchError(f"{what}: SHA256 does not match the signed index")


def _stanzas(index: str, names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name in names:
        start = index.find(f"Package: {name}\n")
        while start > 0 and index[start - 1] != "\n":  # a longer name ending in this one
            start = index.find(f"Package: {name}\n", start + 1)
        if start < 0:
            raise FetchError(f"Debian {SUITE} has no {name}")
        end = index.find("\n\n", start)
        para = index[start : end if end >= 0 else len(index)]
        found[name] = dict(ln.split(": ", 1) for ln in para.splitlines() if ": " in ln and ln[0] != " ")
    return found


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
