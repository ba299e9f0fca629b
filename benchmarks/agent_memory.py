"""Where a router agent's memory goes: RSS after each step of its start-up, in the node image.

    .venv/bin/python benchmarks/agent_memory.py [--json]

Runs `python3` in a throw-away container of the node image (no network) and imports what
`python3 -m vpnlab_agent run` imports, in the same order and with the same trims (__main__'s
_trim_imports, netconfig.lighten_pyroute2, rtnl.py instead of pyroute2), then makes the userspace
engine's packet buffers, reading VmRSS after each step. Then the same with each trim undone, one
at a time, to show what each saves, against the figure before the last trims; and per package,
what its modules added. The running agent adds its SAs and the per-peer state on top;
deploy_scale.py measures those in real labs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from vpnlab.image import ensure_image

PROBE = r'''
import gc, json, sys
flags = set(sys.argv[1:])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
groups = {}
if "groups" in flags:  # each module's own RSS growth while it ran, its imports' left out
    import importlib.abc
    stack = []
    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            for finder in sys.meta_path[1:]:
                spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
                if spec is None:
                    continue
                loader = spec.loader
                if loader is not None and hasattr(loader, "exec_module"):
                    class Timed(importlib.abc.Loader):
                        def create_module(self, spec):
                            return loader.create_module(spec)
                        def exec_module(self, module):
                            start = rss()
                            stack.append(0.0)
                            try:
                                loader.exec_module(module)
                            finally:
                                inner, total = stack.pop(), rss() - start
                                parts = name.split(".")
                                key = ".".join(parts[:2]) if parts[0] in ("vpnlab_agent", "cryptography") else parts[0]
                                groups[key] = groups.get(key, 0.0) + total - inner
                                if stack:
                                    stack[-1] += total
                    spec.loader = Timed()
                return spec
            return None
    sys.meta_path.insert(0, Hook())
steps = [("python3", rss())]
def step(name, code):
    exec(code, globals())
    gc.collect()
    steps.append((name, rss()))
if "ssl" not in flags:
    step("__main__ (json, logging), no ssl", "from vpnlab_agent.__main__ import _trim_imports; _trim_imports()")
if "pyroute2" not in flags:
    step("netconfig (asyncio, rtnl), lighten_pyroute2", "from vpnlab_agent.netconfig import lighten_pyroute2; lighten_pyroute2()")
step("asyncio (in already)", "import asyncio")
step("agent, control, status", "import vpnlab_agent.agent")
if "pyroute2" in flags or "iproute" in flags:
    step("pyroute2 IPRoute", "from pyroute2 import IPRoute")
step("ike (crypto: cryptography)", "import vpnlab_agent.io.ike_service")
step("dataplane probe + userspace", "import vpnlab_agent.dataplane.probe, vpnlab_agent.dataplane.userspace")
buffers = """
from vpnlab_agent.esp import ciphers
from vpnlab_agent.dataplane import udp_tx, userspace
if "bytearray" in flags:
    class Zeroed(ciphers.PacketBuffer):
        def __init__(self, size=65536):
            self.data = bytearray(size)
            self.view = memoryview(self.data)
            self.ptr = None
    ciphers.PacketBuffer = udp_tx.PacketBuffer = userspace.PacketBuffer = Zeroed
tx = udp_tx.UdpTx(None, thread=False)
n = userspace.BUF_SIZE
kept = [userspace.PacketBuffer(n) for n in (n, n + 4096, 4096, n, n, n)]  # outbound and inbound loops
"""
step("engine packet buffers", buffers)
if "mesh" in flags:
    step("mesh service", "import vpnlab_agent.mesh.service")
print(json.dumps({"steps": steps, "modules": len(sys.modules), "groups": groups}))
'''

VARIANTS = {
    "as the agent runs": [],
    "with ssl": ["ssl"],
    "pyroute2's IPRoute imported (the agent before rtnl.py)": ["iproute"],
    "whole pyroute2 (no lighten_pyroute2), IPRoute imported": ["pyroute2"],
    "engine buffers as zeroed bytearrays (before the mmap PacketBuffer)": ["bytearray"],
    "with the mesh service": ["mesh"],
}
# The same probe on main@08cc60b (before rtnl.py and the mmap PacketBuffer), 2026-12-01: RSS after
# the imports; a running branch agent of a 200-branch lab was 34.2 MB (deploy_scale.py) then.
REFERENCE_MIB = 30.4


def run(image: str, flags: list[str]) -> dict[str, object]:
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python3", "-c", PROBE, *flags],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    image = ensure_image()
    results = {name: run(image, flags) for name, flags in VARIANTS.items()}
    groups = run(image, ["groups"])["groups"]
    if args.json:
        print(json.dumps({"variants": results, "groups": groups, "reference_mib": REFERENCE_MIB}, indent=2))
        return 0
    base = results["as the agent runs"]
    table = Table("step", "RSS (MiB)", "+ (MiB)", title=f"agent start-up memory in {image}", title_justify="left")
    prev = 0.0
    for name, value in base["steps"]:  # type: ignore[union-attr]
        table.add_row(name, f"{value:.1f}", f"{value - prev:+.1f}" if prev else "")
        prev = value
    Console(width=120).print(table)
    final = base["steps"][-1][1]  # type: ignore[index]
    trims = Table("variant", "RSS (MiB)", "vs the agent", f"vs 08cc60b ({REFERENCE_MIB:g} MiB)",
                  title="each trim undone (RSS after the last step)", title_justify="left")
    for name, res in results.items():
        value = res["steps"][-1][1]  # type: ignore[index]
        trims.add_row(name, f"{value:.1f}", f"{value - final:+.1f}", f"{value - REFERENCE_MIB:+.1f}")
    Console(width=120).print(trims)
    where = Table("package", "RSS (MiB)", title="where the imports' memory goes (each module's own growth)",
                  title_justify="left")
    shown = sorted(groups.items(), key=lambda kv: -kv[1])  # type: ignore[union-attr]
    for name, value in shown[:15]:
        where.add_row(name, f"{value:.2f}")
    where.add_row(f"{len(shown) - 15} others", f"{sum(v for _, v in shown[15:]):.2f}")
    Console(width=120).print(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
