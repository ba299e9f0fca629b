"""strongSwan's charon in a network namespace for the interop tests: its own config directory
(strongswan.conf through STRONGSWAN_CONF) and its own vici socket, so several can run at once."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

CHARON = "/usr/sbin/charon-systemd"
SWANCTL = "/usr/sbin/swanctl"
START_TIMEOUT_S = 15.0

_STRONGSWAN_CONF = """
charon-systemd {{
  load_modular = no
  load = {load}
{options}
  plugins {{
    vici {{
      socket = unix://{dir}/charon.vici
    }}
  }}
  journal {{
    default = -1
  }}
  filelog {{
    charon {{
      path = {dir}/charon.log
      default = 1
{levels}
    }}
  }}
}}
"""


class Charon:
    """charon started in `ns` with `load` plugins and extra top-level `options`, logging to
    dir/charon.log at `levels`; swanctl_conf is loaded once its vici socket is up."""

    def __init__(self, ns: str, dir: Path, swanctl_conf: str, *, load: str, options: tuple[str, ...] = (),
                 levels: tuple[str, ...] = ("ike = 2",)) -> None:
        self.ns, self.dir = ns, dir
        dir.mkdir(exist_ok=True)
        os.chmod(dir, 0o755)
        (dir / "strongswan.conf").write_text(_STRONGSWAN_CONF.format(
            dir=dir, load=load, options="\n".join(f"  {o}" for o in options),
            levels="\n".join(f"      {lv}" for lv in levels)))
        (dir / "swanctl.conf").write_text(swanctl_conf)
        env = {**os.environ, "STRONGSWAN_CONF": str(dir / "strongswan.conf")}
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, CHARON], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (dir / "charon.vici").exists():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"charon did not start (rc={self.p.poll()}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        try:
            self.swanctl("--load-all", "--noprompt", "--file", str(dir / "swanctl.conf"))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def installed() -> bool:
        return os.access(CHARON, os.X_OK) and os.access(SWANCTL, os.X_OK)

    @property
    def log_path(self) -> Path:
        return self.dir / "charon.log"

    def swanctl(self, *args: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.ns, SWANCTL, *args, "--uri", f"unix://{self.dir}/charon.vici"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise AssertionError(f"swanctl {' '.join(args)}: {r.stdout[-1500:]}{r.stderr[-500:]}")
        return r.stdout

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
