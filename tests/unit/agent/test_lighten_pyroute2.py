"""netconfig.lighten_pyroute2(): the agent's pyroute2 names load without pyroute2's whole __init__.

Each case runs in a fresh interpreter: the point is what gets imported, and this test process
has long since imported the real package.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    prelude = "import sys\nfrom vpnlab_agent.netconfig import lighten_pyroute2\nassert lighten_pyroute2()\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_used_names_load_without_the_heavy_modules() -> None:
    out = _run("""
        from pyroute2 import IPRoute, NetlinkError, NetNS
        from pyroute2.netlink.exceptions import NetlinkError as direct
        from pyroute2 import config
        assert NetlinkError is direct and IPRoute.__name__ == "IPRoute" and NetNS.__name__ == "NetNS"
        assert hasattr(config, "AF_BRIDGE")
        IPRoute().close()
        print("ndb" if "pyroute2.ndb.main" in sys.modules else "light", "unittest" in sys.modules)
    """)
    assert out.split() == ["light", "False"]  # nor pyroute2.lab's unittest.mock


def test_any_other_name_still_works_through_the_real_init() -> None:
    out = _run("""
        import pyroute2
        from pyroute2 import IPDB
        print(IPDB.__name__, "pyroute2.ndb.main" in sys.modules)
        try:
            pyroute2.NoSuchName
        except AttributeError as exc:
            print("AttributeError")
    """)
    assert out.split() == ["IPDB", "True", "AttributeError"]


def test_second_call_is_a_no_op() -> None:
    assert _run("print(lighten_pyroute2())").strip() == "False"
