"""How long traffic stops after a fault, measured by events: a timestamped ping (`ping -D`) runs in a
node through the fault, and the outage is read from which echoes came back and when. No sleeps.

`outage(replies, fault_at)`: packets sent after the fault that got no reply are lost; traffic
flows again at the first reply after the first loss (or, with no loss, the first reply to a
packet sent after the fault). Times are wall-clock seconds, the same clock in every container.

`run_benchmark` is the frame the outage benchmarks share (benchmarks/nat_rebinding.py,
node_restart.py, dual_hub_failover.py): options, a temporary lab, rounds, a table or JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vpnlab.errors import LabError
from vpnlab.measure.labctl import LabCtl, temporary_lab, wait_for
from vpnlab.runtime.base import Runtime

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+) .*time=([\d.]+) ms")


@dataclass(frozen=True)
class Reply:
    seq: int
    recv: float  # wall clock
    rtt_s: float

    @property
    def sent(self) -> float:
        return self.recv - self.rtt_s


@dataclass(frozen=True)
class Outage:
    lost: int  # packets sent after the fault without a reply
    recovered_s: float | None  # fault -> traffic flows again; None: it never did


def parse_ping(text: str) -> list[Reply]:
    """`ping -D -n` output -> the replies in seq order (duplicates dropped)."""
    seen: dict[int, Reply] = {}
    for line in text.splitlines():
        m = _REPLY.match(line.strip())
        if m and int(m[2]) not in seen:
            seen[int(m[2])] = Reply(int(m[2]), float(m[1]), float(m[3]) / 1000)
    return [seen[s] for s in sorted(seen)]


def send_times(replies: list[Reply], interval: float) -> dict[int, float]:
    """When each seq up to the last reply left: replies know theirs, lost ones are interpolated
    between the replied neighbours (before the first reply, counted back by `interval`)."""
    if not replies:
        return {}
    out: dict[int, float] = {r.seq: r.sent for r in replies}
    for a, b in zip(replies, replies[1:]):
        step = (b.sent - a.sent) / (b.seq - a.seq)
        for seq in range(a.seq + 1, b.seq):
            out[seq] = a.sent + (seq - a.seq) * step
    first = replies[0]
    for seq in range(1, first.seq):
        out[seq] = first.sent - (first.seq - seq) * interval
    return out


def outage(replies: list[Reply], fault_at: float, interval: float) -> Outage:
    sent = send_times(replies, interval)
    by_seq = {r.seq: r for r in replies}
    after = [s for s in sorted(sent) if sent[s] >= fault_at]
    lost = [s for s in after if s not in by_seq]
    back = [by_seq[s] for s in after if s in by_seq and (not lost or s > lost[0])]
    return Outage(len(lost), back[0].recv - fault_at if back else None)


class Probe:
    """A `ping -D -i interval` from `node` to `dst` for the length of a `with` block."""

    def __init__(self, rt: Runtime, container: str, dst: str, interval: float = 0.02, limit_s: int = 120) -> None:
        self.rt, self.container, self.dst, self.interval, self.limit_s = rt, container, dst, interval, limit_s
        self._out, self._err = io.BytesIO(), io.BytesIO()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        count = int(self.limit_s / self.interval)  # not -w: with a deadline, ping quits at its first ICMP error
        argv = ["sh", "-c", f'echo "pid $$"; exec ping -D -n -i {self.interval} -c {count} {self.dst}']
        self._thread = threading.Thread(target=self.rt.exec_stream, args=(self.container, argv, self._out, self._err),
                                        daemon=True)
        self._thread.start()
        self.wait_reply()
        return self

    def __exit__(self, *exc: object) -> None:
        pid = self._pid()
        if pid:
            self.rt.exec_capture(self.container, ["kill", "-INT", pid])
        if self._thread is not None:
            self._thread.join(10)

    def _pid(self) -> str | None:
        m = re.match(rb"pid (\d+)", self._out.getvalue())
        return m[1].decode() if m else None

    def replies(self) -> list[Reply]:
        return parse_ping(self._out.getvalue().decode(errors="replace"))

    def wait_reply(self, after: float = 0.0, timeout: float = 30.0) -> Reply:
        """The first reply to a packet sent after `after` (wall clock); LabError after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [r for r in self.replies() if r.sent >= after]
            if got:
                return got[0]
            time.sleep(self.interval)
        raise LabError(f"no echo reply from {self.dst} in {self.container} for {timeout:g} s "
                       f"({self._err.getvalue().decode(errors='replace').strip()[-200:]})")

    def outage(self, fault_at: float) -> Outage:
        return outage(self.replies(), fault_at, self.interval)


# --- the frame of the outage benchmarks ------------------------------------------------------------

Row = dict[str, Any]
# (table, note under it, what goes into the JSON besides "rounds")
Report = tuple[Any, str, dict[str, Any]]


def seconds(rows: Sequence[Row], key: str) -> tuple[list[float], float | None]:
    """The figures `key` of the rows that have one, and the worst of them: None (never) as soon as
    one row has none."""
    vals = [float(r[key]) for r in rows if r[key] is not None]
    return vals, max(vals) if vals and len(vals) == len(rows) else None


def median(vals: Sequence[float], fmt: str = ".3f", none: str = "-") -> str:
    return format(statistics.median(vals), fmt) if vals else none


def verdict(worst: float | None, goal: float) -> str:
    return "met" if worst is not None and worst <= goal else "MISSED"


def table(title: str, columns: Iterable[str]) -> Any:
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right")
    return t


def run_benchmark(*, doc: str | None, topology: str | Callable[[argparse.Namespace], str], prefix: str,
                  ready: tuple[str, Callable[[LabCtl], bool]],
                  rounds: Callable[[LabCtl, Runtime, argparse.Namespace], Iterator[tuple[str, Row]]],
                  report: Callable[[list[Row], argparse.Namespace], Report], repeat: int = 3,
                  options: Callable[[argparse.ArgumentParser], None] | None = None,
                  argv: Sequence[str] | None = None) -> list[Row]:
    """`--repeat` (default `repeat`), `--json` and the script's own `options`; the lab `topology`
    (YAML, or made from the options) under a name starting with `prefix`; wait until `ready`
    (what, predicate) holds; then each (label, row) of `rounds`, printed as it comes; last the
    rows as JSON, or `report`'s table and note."""
    from rich.console import Console

    from vpnlab.runtime.docker import DockerRuntime

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=repeat)
    ap.add_argument("--json", action="store_true")
    if options is not None:
        options(ap)
    args = ap.parse_args(argv)
    con, rt = Console(), DockerRuntime()
    rows: list[Row] = []
    with temporary_lab(rt, topology(args) if callable(topology) else topology, prefix) as ctl:
        wait_for(ready[0], lambda: ready[1](ctl), 60)
        for label, row in rounds(ctl, rt, args):
            rows.append(row)
            con.print(f"{label}{row}", style="dim", markup=False)
    t, note, meta = report(rows, args)
    if args.json:
        print(json.dumps({**meta, "rounds": rows}, indent=2))
        return rows
    con.print(t)
    if note:
        con.print(note)
    return rows
