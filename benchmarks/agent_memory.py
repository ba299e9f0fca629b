"""Where a router agent's memory goes: RSS after each step of its start-up, in the node image.

    .venv/bin/python benchmarks/agent_memory.py [--json]

Runs `python3` in a throw-away container of the node image (no network) and imports what
`python3 -m vpnlab_agent run` imports, in the same order and with the same trims (__main__'s
_trim_imports, netconfig.lighten_pyroute2), reading VmRSS after each step. Then the same with
each trim undone, one at a time, to show what each saves. The running agent adds its engine
buffers, its SAs and the per-peer state on top; deploy_scale.py measures those in real labs.
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
steps = [("python3", rss())]
def step(name, code):
    exec(code, globals())
    gc.collect()
    steps.append((name, rss()))
if "ssl" not in flags:
    step("__main__ (argparse, json, logging), no ssl", "from vpnlab_agent.__main__ import _trim_imports; _trim_imports()")
if "pyroute2" not in flags:
    step("netconfig (asyncio), lighten_pyroute2", "from vpnlab_agent.netconfig import lighten_pyroute2; lighten_pyroute2()")
step("asyncio (in already)", "import asyncio")
step("agent, control, status", "import vpnlab_agent.agent")
step("pyroute2 IPRoute", "from pyroute2 import IPRoute")
step("ike (crypto: cryptography)", "import vpnlab_agent.io.ike_service")
step("dataplane probe + userspace", "import vpnlab_agent.dataplane.probe, vpnlab_agent.dataplane.userspace")
if "mesh" in flags:
    step("mesh service", "import vpnlab_agent.mesh.service")
print(json.dumps({"steps": steps, "modules": len(sys.modules)}))
'''

VARIANTS = {
    "as the agent runs": [],
    "with ssl": ["ssl"],
    "whole pyroute2": ["pyroute2"],
    "with the mesh service": ["mesh"],
}


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
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    base = results["as the agent runs"]
    table = Table("step", "RSS (MiB)", "+ (MiB)", title=f"agent start-up memory in {image}", title_justify="left")
    prev = 0.0
    for name, value in base["steps"]:  # type: ignore[union-attr]
        table.add_row(name, f"{value:.1f}", f"{value - prev:+.1f}" if prev else "")
        prev = value
    Console().print(table)
    final = base["steps"][-1][1]  # type: ignore[index]
    trims = Table("variant", "RSS after imports (MiB)", "vs the agent", title="each trim undone", title_justify="left")
    for name, res in results.items():
        value = res["steps"][-1][1]  # type: ignore[index]
        trims.add_row(name, f"{value:.1f}", f"{value - final:+.1f}")
    Console().print(trims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
