"""The onboard loop on a bad wire: a fault-injecting pty proxy (flipped bits, dropped bytes, garbage bursts)
between the loop and the stand-in. Episodes complete, the plant applies only commands the host sent, each
once and in order, the logs record what the plant applied, and both ends count what the proxy did."""

from __future__ import annotations

import json

import pytest

from firmware_bridge.fault_proxy import FaultProxy
from firmware_bridge.link import Link
from onboard.loop import run
from onboard.profile import load_profile
from onboard.recorder import read_segment, verified_segments
from onboard.tasks import get_task
from tests.firmware_bridge.conftest import StandIn

GARBAGE_SLACK = 64  # bytes still in a parser's buffer, not yet judged, when the run ends


def faulty_run(tmp_path, monkeypatch, rate: float, mode: str, episodes: int, **settings):
    """Run the loop through a FaultProxy; (stats, applied commands, commands sent, proxy counts, plant report)."""
    log = tmp_path / "applied.jsonl"
    plant = StandIn("--task", "pendulum", "--mode", mode, "--applied-log", str(log))
    sent = {}
    send = Link.send_command

    def recording_send(link, u, state_seq, copies=1):
        seq = send(link, u, state_seq, copies)
        sent[seq] = link.commands[seq]
        return seq

    monkeypatch.setattr(Link, "send_command", recording_send)
    try:
        with FaultProxy(plant.port, rate, seed=1) as proxy:
            profile = load_profile("sim", serial=proxy.port, mode=mode, log_dir=str(tmp_path / "data"), **settings)
            stats = run(profile, episodes=episodes, show_status=False)
    finally:
        _, report = plant.stop()
    applied = [json.loads(line) for line in log.read_text().splitlines()]
    return stats, applied, sent, proxy.counts, report


def check_applied_and_recorded(tmp_path, applied, sent):
    """Only commands the host sent, each at most once, in order; and the logs record exactly those."""
    seqs = [a["seq"] for a in applied]
    assert seqs == sorted(set(seqs)), "a command applied twice or out of order"
    assert all(sent[a["seq"]] == a["u"] for a in applied), "a command the host never sent was applied"
    by_seq = {a["seq"]: a["u"] for a in applied}
    segments, problems = verified_segments(tmp_path / "data" / "sim")
    assert problems == []
    transitions = [t for segment in segments for t in read_segment(segment)[1]["/transition"]]
    for t in transitions:  # each recorded action is the one the plant applied over that step
        assert t["action"] == (by_seq[t["applied_seq"]] if t["armed"] and t["applied_seq"] else [0.0])
    return segments, transitions


def check_counters(host: dict, plant: dict, proxy: dict) -> None:
    """Every garbage byte the proxy added was skipped by the end it reached; faults were seen there."""
    for counters, direction in ((host, "to_host"), (plant, "to_plant")):
        injected = proxy[direction]
        assert counters["bytes_skipped"] >= injected["garbage_bytes"] - GARBAGE_SLACK
        if injected["flip"] + injected["drop"] + injected["burst"] > 0:
            assert counters["crc_errors"] + counters["bytes_skipped"] > 0


@pytest.mark.long
@pytest.mark.parametrize("rate", [0.001, 0.01])
def test_lockstep_episodes_complete_under_byte_faults(tmp_path, monkeypatch, rate):
    stats, applied, sent, proxy, report = faulty_run(tmp_path, monkeypatch, rate, "lockstep", episodes=2)
    steps = get_task("pendulum").episode_steps
    assert stats.episodes == 2 and stats.steps == 2 * steps
    segments, transitions = check_applied_and_recorded(tmp_path, applied, sent)
    assert len(applied) == len(transitions) == 2 * steps  # lockstep: one command applied per step, no more
    assert all(not t["held"] and t["armed"] for t in transitions)
    host = read_segment(segments[-1])[0]["summary"]["link"]
    check_counters(host, report, proxy)
    if rate >= 0.01:  # a lost command or state was sent again, and the plant answered a repeat without stepping
        assert host["commands_resent"] > 0 and report["commands_repeated"] + report["crc_errors"] > 0


@pytest.mark.timing
def test_realtime_episodes_complete_under_byte_faults(tmp_path, monkeypatch):
    stats, applied, sent, proxy, report = faulty_run(tmp_path, monkeypatch, 0.001, "realtime", episodes=1)
    assert stats.episodes == 1 and stats.steps == get_task("pendulum").episode_steps
    segments, _ = check_applied_and_recorded(tmp_path, applied, sent)
    check_counters(read_segment(segments[-1])[0]["summary"]["link"], report, proxy)


@pytest.mark.timing
def test_realtime_at_one_percent_rearms_after_watchdog_trips_and_records_the_unarmed_steps(tmp_path, monkeypatch):
    """At 1 % byte faults commands are lost for the watchdog's 3 periods now and then: with
    rearm_after_watchdog the loop re-arms and the episodes complete, the zero-actuation steps recorded.
    Two episodes: an episode sees 3 to 11 trips, and once in a while (the faults are seeded, the timing is not) none."""
    stats, applied, sent, proxy, report = faulty_run(
        tmp_path, monkeypatch, 0.01, "realtime", episodes=2, rearm_after_watchdog=True
    )
    assert stats.episodes == 2 and stats.steps == 2 * get_task("pendulum").episode_steps
    segments, transitions = check_applied_and_recorded(tmp_path, applied, sent)
    summaries = [read_segment(segment)[0]["summary"] for segment in segments]
    rearms = sum(summary["rearms"] for summary in summaries)
    # every re-arm answered a trip (a trip while a re-arm's answer is lost again is cleared by that re-arm)
    assert 1 <= rearms <= report["watchdog_trips"]
    # a trip in an episode costs at least the step it ends in; one between episodes is re-armed at the next arm
    in_episode_rearms = rearms - sum(summary["rearms_at_arm"] for summary in summaries)
    unarmed = sum(summary["unarmed_steps"] for summary in summaries)
    assert unarmed == sum(not t["armed"] for t in transitions) >= in_episode_rearms
    link = summaries[-1]["link"]  # the link's counters run over the whole run
    assert link["states_missed"] + link["states_late"] > 0 and report["commands_repeated"] > 0
    check_counters(link, report, proxy)
