"""pluto 4.10's `whack --status` read into the agent's SA lists (the lines were captured from the e2e lab,
except the child SA line: no child SA installs on a kernel without ESP, so it follows pluto's format);
the conns the service waits for, taken from ipsec.conf."""

from __future__ import annotations

from vpnlab_agent.config import IkeConfig, NodeConfig, PeerConfig
from vpnlab_libreswan.service import conn_names
from vpnlab_libreswan.whack import ike_state, parse_status

CLIENT = """\
000 using kernel interface: xfrm
000 "lb": 10.1.0.0/24===198.51.100.10[@ls1]...203.0.113.2[@lb]===10.0.0.0/22; unrouted; eroute owner: #0
000 "lb":     oriented; my_ip=unset; their_ip=unset; my_updown=ipsec _updown;
000 "lb"[1]: 10.1.0.0/24===198.51.100.10[@ls1]---203.0.113.2...203.0.113.10:4500<203.0.113.2>[@lb]===10.0.1.0/24; unrouted; eroute owner: #0
000 #7: "lb"[1] 203.0.113.10:4500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 14112s; newest; idle;
000 #8: "lb"[1] 203.0.113.10:4500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); REKEY in 3300s; newest; IKE SA #7; idle;
"""
TARGET = """\
000 "br1-via-lsgw": 10.5.0.0/24===198.51.100.14[@lsgw]...198.51.100.15[@br1]===10.11.0.0/24; unrouted; eroute owner: #0
000 "br1-via-lsgw"[2]: 10.5.0.0/24===198.51.100.14[@lsgw]...198.51.100.15[@br1]===10.11.0.0/24; unrouted; eroute owner: #0
000 "br2-via-lsgwa": 10.6.0.0/24===198.51.100.14[@lsgwa]...198.51.100.16[@br2]===10.12.0.0/24; unrouted; eroute owner: #0
000 #5: "br1-via-lsgw"[2] 198.51.100.15:4500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 14112s; newest; idle;
000 #9: "br2-via-lsgwa"[1] 198.51.100.16:500 STATE_V2_PARENT_R1 (sent IKE_SA_INIT reply); EVENT_v2_DISCARD in 200s;
"""


def test_client_after_a_redirect_reports_the_member_it_is_at() -> None:
    conns, ike, children, raw = parse_status(CLIENT, ["lb"])
    assert conns["lb"]["remote"] == "203.0.113.10" and conns["lb"]["remote_ts"] == "10.0.1.0/24"  # the instance
    assert ike == [{"peer": "lb", "state": "established", "pluto_state": "STATE_V2_ESTABLISHED_IKE_SA",
                    "local": "198.51.100.10", "remote": "203.0.113.10", "port": 4500, "serial": 7,
                    "initiator": None}]
    assert children == [{"peer": "lb", "state": "installed", "serial": 8, "ike_serial": 7,
                         "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.0.1.0/24"]}]
    assert len(raw) == 2 and raw[0].startswith("#7: ")


def test_gateway_states_by_conn_and_half_open_ones() -> None:
    conns, ike, children, _ = parse_status(TARGET, ["br1-via-lsgw", "br2-via-lsgwa"])
    assert set(conns) == {"br1-via-lsgw", "br2-via-lsgwa"} and conns["br2-via-lsgwa"]["local_id"] == "@lsgwa"
    assert [(s["peer"], s["state"], s["remote"]) for s in ike] == [
        ("br1-via-lsgw", "established", "198.51.100.15"), ("br2-via-lsgwa", "v2_parent_r1", "198.51.100.16")]
    assert children == []
    assert ike_state("STATE_V2_PARENT_I1") == "v2_parent_i1"


def test_conns_from_ipsec_conf_and_the_ones_we_start() -> None:
    config = NodeConfig(lab="l", name="ls1", role="branch", implementation="libreswan", public_address=None,  # type: ignore[arg-type]
                        interfaces=(), ike=IkeConfig(local_id="ls1", psk="", peers=(
                            PeerConfig("lb", "lb", "203.0.113.2", True, (), ()),)))
    conf = "config setup\n\tuniqueids=no\n\nconn lb\n\tauto=start\n\nconn br1-via-lsgw\n\tauto=add\n"
    assert conn_names(conf, config) == (["lb", "br1-via-lsgw"], ["lb"])
