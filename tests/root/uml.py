"""Run a Python payload inside user-mode Linux: a kernel that has ESP and VRF, unlike the lab machines.

Debian's user-mode-linux boots as an ordinary process in about 2 s with the host's root as its root
filesystem (hostfs), so the payload runs with the repo's venv python and sees the repo. Results come
back through a file on hostfs. Two details make kernel crypto work (see shared/ENVIRONMENT.md):
modules live in /usr/lib/uml/modules/<ver>, reached through a folder whose lib/modules points there,
and the kernel's own module requests (crypto templates such as rfc4106(gcm(aes))) go through a
modprobe wrapper written to /proc/sys/kernel/modprobe.

Debian 12's UML 6.1 is used where it boots; where it cannot (some CPUs, see boot_problem), Debian
unstable's is fetched once (uml_kernel.py) and used instead.

Usage (tests): `result = run_python(code, timeout_s=120)`; result.returncode, result.output.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.root import uml_kernel
from tests.root.uml_kernel import Kernel

# Another user-mode Linux than Debian 12's may be named (e.g. one unpacked elsewhere by hand).
_NAMED = "VPNLAB_UML_KERNEL" in os.environ
_kernel = Kernel(Path(os.environ.get("VPNLAB_UML_KERNEL", "/usr/bin/linux")),
                 Path(os.environ.get("VPNLAB_UML_MODULES", "/usr/lib/uml/modules")))
REPO = Path(__file__).resolve().parents[2]
# What an IPsec test needs; modprobe resolves dependencies (xfrm_algo, authenc, ...).
DEFAULT_MODULES = (
    "xfrm_user", "esp4", "veth", "gcm", "ghash_generic", "ctr", "seqiv", "echainiv",
    "cbc", "hmac", "authenc", "tun", "iptable_mangle", "xt_mark", "xt_tcpudp",
)  # fmt: skip


@dataclass(frozen=True)
class UmlResult:
    returncode: int  # the payload's exit status; -1 if it never reported one
    output: str  # the payload's stdout and stderr
    console: str  # the kernel console (boot messages, init errors)
    duration_s: float


class UmlError(Exception):
    """UML could not run the payload (no kernel, boot failure, timeout)."""


def unavailable_reason(kernel: Kernel | None = None) -> str | None:
    kernel = kernel or _kernel
    if not os.access(kernel.path, os.X_OK):
        return f"user-mode Linux is not installed ({kernel.path} missing): apt-get install user-mode-linux"
    if not kernel.modules.is_dir() or not any(kernel.modules.iterdir()):
        return f"no user-mode Linux modules under {kernel.modules}"
    if shutil.which("modprobe") is None:
        return "modprobe is missing: apt-get install kmod"
    return None


_BOOT_MARKER = "vpnlab-uml-booted"


@functools.cache
def boot_problem() -> str | None:
    """Why UML still cannot run a payload here, in one line, or None if it can.

    Probed once per test session with an empty payload. On some host CPUs Debian 12's 6.1 kernel
    panics at boot (a Xeon with AMX: "ptrace set fp regs failed, errno = 14", its XSAVE area being
    larger than UML 6.1 handles) and every UML test would fail the same way: then Debian unstable's
    kernel is fetched and probed, and used from here on if it boots."""
    global _kernel
    problem = _probe(_kernel)
    if problem is None or _NAMED:
        return problem
    from vpnlab.image import ImageError, debian_mirror

    try:
        newer = uml_kernel.fetch(debian_mirror())
    except (uml_kernel.FetchError, ImageError, OSError, subprocess.CalledProcessError) as e:
        return f"{problem}; no newer one to try: {str(e).splitlines()[0]}"
    if (again := _probe(newer)) is not None:
        return f"{problem}; Debian {uml_kernel.SUITE}'s does not boot either: {again}"
    _kernel = newer
    return None


def _probe(kernel: Kernel) -> str | None:
    if (reason := unavailable_reason(kernel)) is not None:
        return reason
    try:
        result = run_python(f"print({_BOOT_MARKER!r})", timeout_s=60, modules=(), kernel=kernel)
    except UmlError as e:
        return f"user-mode Linux does not boot here: {str(e).splitlines()[0]}"
    if _BOOT_MARKER in result.output:
        return None
    lines = [ln.strip() for ln in result.console.splitlines() if ln.strip()]
    # The first line that says why init died, else the panic itself (boot chatter such as
    # "mmapper_init - find_iomem failed" is harmless and comes earlier).
    why = next((ln for key in ("ptrace", "Kernel panic", "not syncing") for ln in lines if key in ln),
               lines[-1] if lines else "no console output")
    return f"user-mode Linux {kernel.path} cannot boot on this host (kernel console: {why!r})"


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv if venv.exists() else sys.executable)


def _init_script(work: Path, payload: Path, modules: tuple[str, ...], python: str) -> str:
    moddir = work / "moddir"
    q = shlex.quote
    return f"""#!/bin/sh
# init (pid 1) inside user-mode Linux: set up, run the payload, record its status, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH={q(str(REPO / "node-image"))}:{q(str(REPO / "orchestrator"))}:{q(str(REPO))}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /run
mkdir -p /run/netns
echo {q(str(work / "modprobe"))} > /proc/sys/kernel/modprobe
for m in {" ".join(q(m) for m in modules)}; do
  modprobe -d {q(str(moddir))} "$m" >> {q(str(work / "output"))} 2>&1 || echo "modprobe $m failed" >> {q(str(work / "output"))}
done
ip link set lo up
cd {q(str(REPO))}
{q(python)} {q(str(payload))} >> {q(str(work / "output"))} 2>&1
echo $? > {q(str(work / "rc"))}
sync
poweroff -f
"""


def run_python(
    code: str,
    *,
    timeout_s: float = 180,
    modules: tuple[str, ...] = DEFAULT_MODULES,
    mem: str = "512M",
    kernel: Kernel | None = None,
) -> UmlResult:
    """Boot UML, run `code` with the repo's python as root inside it, return its status and output."""
    kernel = kernel or _kernel
    reason = unavailable_reason(kernel)
    if reason:
        raise UmlError(reason)
    # Under /var/tmp (on the host's root disk, visible through hostfs; never a tmpfs of our own).
    work = Path(tempfile.mkdtemp(prefix="vpnlab-uml-", dir="/var/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        moddir = work / "moddir" / "lib"
        moddir.mkdir(parents=True)
        (moddir / "modules").symlink_to(kernel.modules)
        wrapper = work / "modprobe"
        wrapper.write_text(f'#!/bin/sh\nexec modprobe -d {shlex.quote(str(work / "moddir"))} "$@"\n')
        wrapper.chmod(0o755)
        payload = work / "payload.py"
        payload.write_text(code)
        init = work / "init"
        init.write_text(_init_script(work, payload, modules, _python()))
        init.chmod(0o755)
        (work / "output").touch()
        console = work / "console"
        cmd = [
            str(kernel.path), f"mem={mem}", "rootfstype=hostfs", "rootflags=/", "rw",
            f"init={init}", "con=null", "con0=fd:0,fd:1", "quiet",
        ]  # fmt: skip
        start = time.monotonic()
        with open(console, "wb") as out:
            # Own session: UML forks helper processes; on timeout the whole group goes.
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "TMPDIR": str(work)},
            )  # fmt: skip
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise UmlError(
                    f"UML did not power off within {timeout_s:.0f}s; payload output:\n"
                    + (work / "output").read_text(errors="replace")[-3000:]
                ) from None
        duration = time.monotonic() - start
        rc_file = work / "rc"
        rc = int(rc_file.read_text().strip() or -1) if rc_file.exists() else -1
        return UmlResult(
            returncode=rc,
            output=(work / "output").read_text(errors="replace"),
            console=console.read_text(errors="replace"),
            duration_s=duration,
        )
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
