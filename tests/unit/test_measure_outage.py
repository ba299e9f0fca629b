"""Reading an outage from `ping -D` output: which echoes were lost after the fault and when traffic
flowed again."""

from __future__ import annotations

import pytest

from vpnlab.measure.outage import Reply, outage, parse_ping, send_times

PING = """\
pid 42
PING 10.0.0.10 (10.0.0.10) 56(84) bytes of data.
[100.010000] 64 bytes from 10.0.0.10: icmp_seq=1 ttl=62 time=10.0 ms
[100.110000] 64 bytes from 10.0.0.10: icmp_seq=2 ttl=62 time=10.0 ms
[100.110500] 64 bytes from 10.0.0.10: icmp_seq=2 ttl=62 time=10.5 ms (DUP!)
[100.350000] From 10.1.0.1 icmp_seq=3 Destination Host Unreachable
[100.610000] 64 bytes from 10.0.0.10: icmp_seq=7 ttl=62 time=10.0 ms
[100.710000] 64 bytes from 10.0.0.10: icmp_seq=8 ttl=62 time=10.0 ms
"""


def test_parse_keeps_one_reply_per_seq_and_skips_errors() -> None:
    got = parse_ping(PING)
    assert [r.seq for r in got] == [1, 2, 7, 8]
    assert got[0] == Reply(1, 100.01, 0.01) and got[0].sent == pytest.approx(100.0)


def test_lost_packets_get_send_times_between_their_neighbours() -> None:
    sent = send_times(parse_ping(PING), 0.1)
    assert [round(sent[s], 3) for s in range(1, 9)] == [100.0, 100.1, 100.2, 100.3, 100.4, 100.5, 100.6, 100.7]


def test_outage_ends_at_the_first_echo_after_the_first_loss() -> None:
    got = outage(parse_ping(PING), fault_at=100.15, interval=0.1)
    assert got.lost == 4 and got.recovered_s == pytest.approx(0.46)


def test_no_loss_is_the_first_echo_of_a_packet_sent_after_the_fault() -> None:
    replies = [Reply(s, 100 + s * 0.1 + 0.001, 0.001) for s in range(1, 6)]
    got = outage(replies, fault_at=100.25, interval=0.1)
    assert got.lost == 0 and got.recovered_s == pytest.approx(0.051)


def test_traffic_that_never_came_back() -> None:
    replies = [Reply(1, 100.001, 0.001), Reply(2, 100.101, 0.001)]
    assert outage(replies, fault_at=100.5, interval=0.1).recovered_s is None


def test_benchmark_figures_say_never_as_soon_as_one_round_never_recovered() -> None:
    from vpnlab.measure.outage import median, seconds, verdict

    rows = [{"s": 0.4}, {"s": 0.9}, {"s": 0.5}]
    assert seconds(rows, "s") == ([0.4, 0.9, 0.5], 0.9)
    assert median(seconds(rows, "s")[0]) == "0.500" and median([], ".2f") == "-"
    assert verdict(0.9, 1.0) == "met" and verdict(1.1, 1.0) == "MISSED"
    vals, worst = seconds(rows + [{"s": None}], "s")
    assert vals == [0.4, 0.9, 0.5] and worst is None and verdict(worst, 1.0) == "MISSED"
    assert seconds([], "s") == ([], None)
