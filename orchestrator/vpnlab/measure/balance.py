"""`vpnlab measure balance`: how a gateway cluster spreads clients, fails over and takes a member back.

The lab is the topology plus a swarm of IKE clients (vpnlab_agent/cluster/swarm.py) added to its
first cluster. Steps: deploy; wait for one VRRP master and complete pools; start the swarm (all at
once) and sample every member until every client is up; kill the master's container (SIGKILL:
nothing is said to anyone); sample until every client is up again on the survivors; bring the
member back (a new container, wired like the first) and reconnect the swarm. Times come from the
nodes' own clocks (keepalived's notify, the swarm's IKE events), not from this process's polling.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.base import Runtime, container_name, node_labels
from vpnlab.topology.model import Cluster, Lab

SAMPLE_S = 0.5
UP_TIMEOUT_S = 120.0


def with_swarm(topology: str | Path, clients: int, legacy: int, name: str,
               tweak: Callable[[dict[str, Any]], None] | None = None) -> Lab:
    """The topology with a swarm of `clients` added to its first cluster, as lab `name`; `tweak`
    may change the raw document first (tests: a strongSwan branch, the redirect point)."""
    from vpnlab.topology import loader, plan

    file = str(topology)
    data = copy.deepcopy(loader.read_yaml(topology))
    if tweak is not None:
        tweak(data)
    clusters = data.get("clusters") or {}
    if not isinstance(clusters, dict) or not clusters:
        raise LabError(f"{file}: no clusters: nothing to balance")
    first = next(iter(clusters))
    clusters[first] = dict(clusters[first] or {}, swarm={"clients": clients, "legacy": legacy})
    data["name"] = name
    spec = loader.validate(file, data)
    return plan.plan_lab(spec, Path(topology), file)


def restart_node(lab: Lab, rt: Runtime, image: str, node: str) -> None:
    """A fresh container for `node` (a SIGKILLed one keeps stale state, keepalived's pid files among
    it), labelled and wired as at deploy: lifecycle.wire_node from its vpnlab.ports records, with
    the MACs of deploy (a new one would blackhole the member for ~10 s: stale ARP at the upstream),
    so `vpnlab restart` works on it later too."""
    from vpnlab import lifecycle
    from vpnlab.kinds.registry import kind_for
    from vpnlab.net.portrecords import LABEL_PORTS, port_records, ports_label
    from vpnlab.net.wiring import plan_fabric

    n = lab.node(node)
    spec = kind_for(n).container_spec(lab, n)
    labels = {**node_labels(lab, n),
              LABEL_PORTS: ports_label(lab, plan_fabric(lab), node, configure_from_outside=not spec.has_agent)}
    cname = container_name(lab.name, node)
    rt.remove(cname)
    info = rt.start(cname, image, spec, labels)
    lifecycle.wire_node(lab.name, info, port_records(labels))


def cluster_of(status: dict[str, Any]) -> dict[str, Any]:
    return (status.get("services") or {}).get("cluster") or {}


def cluster_now(ctl: LabCtl, node: str) -> dict[str, Any]:
    """A member's cluster status, {} while its agent does not answer (booting, dead)."""
    try:
        return cluster_of(ctl.status(node))
    except LabError:
        return {}


def sample(ctl: LabCtl, cluster: Cluster, alive: tuple[str, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"t": time.time(), "members": {}}
    for m in alive:
        try:
            st = ctl.status(m)
        except LabError:
            continue
        c = cluster_of(st)
        row["members"][m] = {
            "tunnels": sum(1 for sa in st.get("ike_sas", []) if sa.get("state") == "established"),
            "vrrp": c.get("vrrp"),
            "redirects": (c.get("gateway") or {}).get("redirected", 0) + (c.get("gateway") or {}).get("to_self", 0),
        }
    sw = ctl.status(cluster.swarm)["services"]["swarm"]
    row["swarm"] = {k: sw[k] for k in ("up", "by_gateway", "last_up_at", "started_at", "redirects_followed")}
    return row


def spread(counts: dict[str, int]) -> dict[str, Any]:
    values = list(counts.values())
    return {"per_member": counts, "max_minus_min": max(values) - min(values),
            "stddev": round(statistics.pstdev(values), 2) if len(values) > 1 else 0.0}


def _by_member(cluster: Cluster, row: dict[str, Any], alive: tuple[str, ...]) -> dict[str, int]:
    return {m: row["members"].get(m, {}).get("tunnels", 0) for m in alive}


def balance(topology: str | Path, *, clients: int = 300, legacy: int = 0, failover: bool = True,
            runtime: Runtime | None = None, keep: bool = False,
            tweak: Callable[[dict[str, Any]], None] | None = None,
            say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from vpnlab.environment import check_docker, check_privileges
    from vpnlab.image import ensure_image

    base = labs.load_lab(topology)
    name = f"{base.name[:8]}-bal"
    lab = with_swarm(topology, clients, legacy, name, tweak)
    cluster = lab.clusters[0]
    check_privileges()
    check_docker()
    rt = labs._runtime(runtime)
    image = ensure_image()
    labs.destroy(name, runtime=rt)
    out: dict[str, Any] = {"topology": str(topology), "clients": clients, "legacy": legacy,
                           "members": list(cluster.members), "advert_int_s": cluster.advert_int_s,
                           "vrrp_version": cluster.vrrp_version, "redirect": cluster.redirect,
                           "metric": cluster.metric, "samples": [], "events": [],
                           "branches": sum(1 for n in lab.nodes if n.role == "branch" and cluster.name in n.hubs)}
    ctl = LabCtl(rt, name)
    members = cluster.members
    say(f"deploying {name}: {len(members)} members, {clients} swarm clients")
    try:
        labs.deploy_lab(lab, image, runtime=rt)

        # with preemption, the member of the highest priority: a burst that starts before it takes
        # over is balanced by a master that does not know what the first one just handed out
        top = max(members, key=lambda m: cluster.priorities.get(m, 0)) if cluster.preempt else None

        def settled() -> bool:
            states = [cluster_of(ctl.status(m)) for m in members]
            vrrp = [s.get("vrrp") for s in states]
            return (vrrp.count("MASTER") == 1 and (top is None or vrrp[members.index(top)] == "MASTER")
                    and all(all(v["in_pool"] for v in s["members"].values()) for s in states))

        wait_for("one VRRP master (the preempting one) and complete pools", settled, 60, 0.5)
        # 1. the swarm connects at once
        ctl.rt.exec_capture(ctl.cname(cluster.swarm), ["python3", "-m", "vpnlab_agent", "ctl", "initiate", cluster.name])
        out["events"].append({"t": time.time(), "what": "swarm started"})
        row = _until(ctl, cluster, members, out, lambda r: r["swarm"]["up"] == clients, say, "every client up")
        sw = row["swarm"]
        out["connect"] = {"all_up_s": round(sw["last_up_at"] - sw["started_at"], 3),
                          "spread": spread(_by_member(cluster, row, members)),
                          "redirects_followed": sw["redirects_followed"]}
        say(f"all {clients} up in {out['connect']['all_up_s']} s: {out['connect']['spread']['per_member']}")
        if failover:
            out["failover"] = _failover(ctl, rt, lab, cluster, image, out, say)
    finally:
        if not keep:
            labs.destroy(name, runtime=rt)
    return out


def _until(ctl: LabCtl, cluster: Cluster, alive: tuple[str, ...], out: dict[str, Any],
           done: Callable[[dict[str, Any]], bool], say: Callable[[str], None], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        row = sample(ctl, cluster, alive)
        out["samples"].append(row)
        if done(row):
            # the members were asked before the swarm: ask them again until they show every client
            want = sum(row["swarm"]["by_gateway"].values()) + out["branches"]
            for _ in range(20):
                if sum(m["tunnels"] for m in row["members"].values()) >= want:
                    break
                time.sleep(SAMPLE_S)
                row = sample(ctl, cluster, alive)
                out["samples"].append(row)
            return row
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {UP_TIMEOUT_S:g} s waiting for {what} (last: {row['swarm']})")
        time.sleep(SAMPLE_S)


def _failover(ctl: LabCtl, rt: Runtime, lab: Lab, cluster: Cluster, image: str, out: dict[str, Any],
              say: Callable[[str], None]) -> dict[str, Any]:
    members = cluster.members
    master = next(m for m in members if cluster_of(ctl.status(m)).get("vrrp") == "MASTER")
    dead_addr = str(cluster.member_addresses[master])
    before = sample(ctl, cluster, members)
    on_dead = before["swarm"]["by_gateway"].get(dead_addr, 0)
    survivors = tuple(m for m in members if m != master)
    say(f"killing the master {master} ({on_dead} swarm clients on it)")
    rt.client.api.kill(ctl.cname(master))  # type: ignore[attr-defined]
    died = _finished_at(rt, ctl.cname(master))
    out["events"].append({"t": died, "what": f"{master} killed"})

    def new_master() -> tuple[str, float] | None:
        for m in survivors:
            c = cluster_now(ctl, m)
            if c.get("vrrp") == "MASTER":
                at = max(x["at"] for x in c["vrrp_changes"] if x["state"] == "MASTER")
                return m, at
        return None

    who, became = wait_for("a new VRRP master", new_master, 30, 0.2)
    out["events"].append({"t": became, "what": f"{who} is master"})
    say(f"{who} took the virtual address {became - died:.3f} s after {master} died")

    def recovered(r: dict[str, Any]) -> bool:
        return r["swarm"]["up"] == out["clients"] and dead_addr not in r["swarm"]["by_gateway"]

    row = _until(ctl, cluster, survivors, out, recovered, say, "every client back on the survivors")
    back = row["swarm"]["last_up_at"]
    out["events"].append({"t": back, "what": "every client up again"})
    result: dict[str, Any] = {
        "killed": master, "clients_on_killed": on_dead, "new_master": who,
        "vip_failover_s": round(became - died, 3), "all_back_s": round(back - died, 3),
        "spread_after": spread(_by_member(cluster, row, survivors)),
    }
    say(f"every client back {result['all_back_s']} s after the kill: {result['spread_after']['per_member']}")
    # the member comes back: a new container; new clients (the swarm reconnecting) reach it again
    restart_node(lab, rt, image, master)
    wait_for(f"{master} back in every pool", lambda: all(
        cluster_now(ctl, m).get("members", {}).get(master, {}).get("in_pool") for m in members), 60, 0.5)
    out["events"].append({"t": time.time(), "what": f"{master} back"})
    ctl.rt.exec_capture(ctl.cname(cluster.swarm), ["python3", "-m", "vpnlab_agent", "ctl", "terminate", cluster.name])
    wait_for("the swarm's SAs gone", lambda: sample(ctl, cluster, members)["swarm"]["up"] == 0, 30, 0.5)
    # and gone from the status messages too: else the master balances the new burst on the old loads
    wait_for("the members' status without the swarm", lambda: all(
        v.get("active") is not None and v["active"] <= out["branches"]
        for m in members for v in cluster_now(ctl, m).get("members", {}).values()), 30, 0.5)
    ctl.rt.exec_capture(ctl.cname(cluster.swarm), ["python3", "-m", "vpnlab_agent", "ctl", "initiate", cluster.name])
    out["events"].append({"t": time.time(), "what": "swarm reconnects"})
    row = _until(ctl, cluster, members, out, lambda r: r["swarm"]["up"] == out["clients"], say, "every client up")
    result["spread_after_rejoin"] = spread(_by_member(cluster, row, members))
    say(f"after {master} came back: {result['spread_after_rejoin']['per_member']}")
    result["member_killed"] = _kill_member(ctl, rt, cluster, out, say)
    return result


def _ike_sas(ctl: LabCtl, members: tuple[str, ...]) -> set[tuple[str, str]]:
    """(member, SPIi) of every established IKE SA the members hold."""
    return {(m, sa["spi_i"]) for m in members for sa in ctl.status(m).get("ike_sas", [])
            if sa.get("state") == "established"}


def _kill_member(ctl: LabCtl, rt: Runtime, cluster: Cluster, out: dict[str, Any],
                 say: Callable[[str], None]) -> dict[str, Any]:
    """A member that is not the master killed: its clients come back through the virtual address
    and spread over the others; the others' tunnels stay as they were (same IKE SAs)."""
    members = cluster.members
    master = next(m for m in members if cluster_now(ctl, m).get("vrrp") == "MASTER")
    victim = next(m for m in reversed(members) if m != master)
    addr = str(cluster.member_addresses[victim])
    others = tuple(m for m in members if m != victim)
    kept_before = _ike_sas(ctl, others)
    on_victim = sample(ctl, cluster, members)["swarm"]["by_gateway"].get(addr, 0)
    say(f"killing {victim}, not the master ({on_victim} swarm clients on it)")
    rt.client.api.kill(ctl.cname(victim))  # type: ignore[attr-defined]
    died = _finished_at(rt, ctl.cname(victim))
    out["events"].append({"t": died, "what": f"{victim} killed"})
    row = _until(ctl, cluster, others, out, lambda r: r["swarm"]["up"] == out["clients"]
                 and addr not in r["swarm"]["by_gateway"], say, f"every client of {victim} back")
    back = row["swarm"]["last_up_at"]
    out["events"].append({"t": back, "what": "every client up again"})
    kept = kept_before & _ike_sas(ctl, others)
    result = {"killed": victim, "master": master, "clients_on_killed": on_victim,
              "all_back_s": round(back - died, 3), "spread_after": spread(_by_member(cluster, row, others)),
              "others_sas_before": len(kept_before), "others_sas_kept": len(kept),
              "master_still": cluster_now(ctl, master).get("vrrp") == "MASTER"}
    say(f"{victim}'s clients back {result['all_back_s']} s after the kill: {result['spread_after']['per_member']}; "
        f"{len(kept)} of the others' {len(kept_before)} IKE SAs untouched")
    return result


def _finished_at(rt: Runtime, cname: str) -> float:
    """When the engine saw the container die (its own clock), as epoch seconds."""
    from datetime import datetime

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = rt.client.api.inspect_container(cname)["State"]  # type: ignore[attr-defined]
        if not state.get("Running"):
            stamp = state["FinishedAt"]  # 2026-12-01T09:02:12.123456789Z
            head, frac = stamp.rstrip("Z").split(".")
            return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + frac)
        time.sleep(0.05)
    raise LabError(f"{cname} did not die")


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Tunnels per member over time, with the kill, the new master and the rejoin marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    if not samples:
        return
    t0 = samples[0]["t"]
    fig, ax = plt.subplots(figsize=(9, 4))
    for m in result["members"]:
        ts = [s["t"] - t0 for s in samples if m in s["members"]]
        ys = [s["members"][m]["tunnels"] for s in samples if m in s["members"]]
        ax.plot(ts, ys, marker=".", label=m)
    for ev in result["events"]:
        ax.axvline(ev["t"] - t0, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(ev["what"], (ev["t"] - t0, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("established tunnels")
    ax.set_title(f"{result['clients']} clients over {len(result['members'])} members")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
