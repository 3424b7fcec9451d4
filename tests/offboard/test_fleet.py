"""Fleet collection: collectors on a real Ray cluster (started by the test on 127.0.0.1), each an onboard loop with
its own stand-in; their segments listed in one folder as pull-data lists them, the same episodes as one process
runs, and a collector killed mid-episode costs that episode only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from offboard.evaluate import run_episodes
from onboard.recorder import read_manifest, read_segment, verified_segments

pytest.importorskip("ray", reason="the cluster extra (Ray) is not installed")

from offboard.fleet import Fleet  # noqa: E402  (after the skip: it needs Ray's extra only at run time)


def transitions(folder) -> dict:
    """Each listed segment's transitions as arrays, by name."""
    segments, problems = verified_segments(folder)
    assert problems == [] and not list(folder.glob("*.partial"))
    out = {}
    for segment in segments:
        steps = read_segment(segment)[1]["/transition"]
        out[segment.name] = {k: np.array([s[k] for s in steps]) for k in ("state", "action", "cost", "next_state")}
    return out


@pytest.mark.long
def test_two_collectors_list_every_episode_once_and_the_same_as_one_process(cluster, tmp_path):
    fleet = Fleet(cluster, 2)
    try:
        run_episodes(tmp_path / "fleet", "robot", "pendulum", 1, 3, "", {})  # the folder's earlier episode
        outcomes = fleet.run_episodes(tmp_path / "fleet", "robot", "pendulum", 4, 3, "", {})
    finally:
        fleet.close()
    local = run_episodes(tmp_path / "local", "robot", "pendulum", 5, 3, "", {})
    assert len(outcomes.costs) == 4 and outcomes.costs == local.costs[1:]
    names = [entry["segment"] for entry in read_manifest(tmp_path / "fleet" / "robot")]
    assert names == [f"{i:06d}.mcap" for i in range(1, 6)]  # each once, numbered on from the folder's last
    ours, theirs = transitions(tmp_path / "fleet" / "robot"), transitions(tmp_path / "local" / "robot")
    assert set(ours) == set(theirs)
    for name in ours:
        for key in ours[name]:
            np.testing.assert_array_equal(ours[name][key], theirs[name][key], err_msg=f"{name} {key}")


@pytest.mark.long
def test_a_collector_killed_mid_episode_costs_that_episode_only(cluster, tmp_path):
    import ray

    fleet = Fleet(cluster, 2)
    killed = threading.Event()

    def kill_the_first_after_its_first_segment(collector, episode):
        if not killed.is_set() and collector == fleet.collectors[0]:
            killed.set()
            ray.kill(collector)  # it is in its next episode now: its .partial stays with it

    try:  # ball-in-cup episodes take seconds: the kill lands mid-episode
        outcomes = fleet.run_episodes(
            tmp_path, "robot", "ball_in_cup", 4, 0, "", {}, on_listed=kill_the_first_after_its_first_segment
        )
    finally:
        fleet.close()
    assert killed.is_set() and fleet.reruns >= 1 and len(outcomes.costs) == 4
    names = [entry["segment"] for entry in read_manifest(tmp_path / "robot")]
    assert names == [f"{i:06d}.mcap" for i in range(1, 5)]  # all of them, once each
    assert len(transitions(tmp_path / "robot")) == 4  # every one verified, nothing partial listed
