"""The Gymnasium environments: each task over a real pty to the firmware stand-in, and in plain MuJoCo."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import offboard.gym_env  # noqa: F401 (registers mpq/<Task>-v0)
from offboard.gym_env import env_id
from onboard.tasks import TASKS


@pytest.fixture
def sim_logs(tmp_path, monkeypatch):
    """The stand-in's log under tmp_path, not in the repository's data/."""
    from onboard import profile

    load = profile.load_profile
    monkeypatch.setattr("offboard.gym_env.load_profile", lambda robot, **kw: load(robot, log_dir=str(tmp_path), **kw))
    return tmp_path


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_passes_gymnasiums_checks_on_the_hardware_path(task, sim_logs):
    env = gymnasium.make(env_id(task), render_mode="rgb_array")
    try:
        check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()


def test_the_link_gives_the_transitions_of_the_plant_itself(sim_logs):
    """Same seed, same (float32) actions: the stand-in over the pty and MuJoCo in-process agree to the wire's
    float32, step after step, and the reward is minus the task's cost."""
    link = gymnasium.make("mpq/Pendulum-v0")
    plain = gymnasium.make("mpq/PendulumMujoco-v0")
    try:
        obs_link, _ = link.reset(seed=7)
        obs_plain, _ = plain.reset(seed=7)
        np.testing.assert_allclose(obs_link, obs_plain, rtol=1e-6, atol=1e-6)
        actions = np.random.default_rng(0).uniform(-2, 2, (200, 1)).astype(np.float32)
        rewards, steps = [], 0
        for action in actions:
            obs_link, r_link, term_link, trunc_link, _ = link.step(action)
            obs_plain, r_plain, term_plain, trunc_plain, _ = plain.step(action)
            np.testing.assert_allclose(obs_link, obs_plain, rtol=1e-5, atol=1e-5)
            assert r_link == pytest.approx(r_plain, rel=1e-5, abs=1e-5) and r_link <= 0
            rewards.append(r_link)
            steps += 1
            assert term_link is term_plain is False
            if trunc_link:
                break
        assert trunc_plain and steps == 200  # the task's episode length, from its MJCF
        assert np.std(rewards) > 0  # the pendulum moved
    finally:
        link.close()
        plain.close()


def test_rendered_frames_follow_the_state(sim_logs):
    env = gymnasium.make("mpq/PendulumMujoco-v0", render_mode="rgb_array")
    env.reset(seed=1)
    first = env.render()
    for _ in range(20):
        env.step(np.array([2.0], dtype=np.float32))
    later = env.render()
    assert first.shape == later.shape == (240, 320, 3) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - later.astype(int)).sum() > 0  # the pole moved on screen
    env.close()


# --- Minari ----------------------------------------------------------------------------------------
@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def test_a_robots_segments_export_to_minari_and_load_back_as_recorded(tmp_path, minari_home, capsys):
    """Two episodes of the sim robot through the loop; the export, loaded with minari.load_dataset, holds
    exactly the logged observations, applied actions and minus the costs, with each segment's metadata."""
    import minari

    from offboard.__main__ import main
    from onboard.loop import run
    from onboard.profile import load_profile
    from onboard.recorder import read_segment, verified_segments
    from onboard.tasks import get_task

    run(load_profile("sim", log_dir=str(tmp_path / "data")), 2, show_status=False)
    folder = tmp_path / "data" / "sim"
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/sim-v0"]) == 0
    assert "exported 2 episodes (400 steps)" in capsys.readouterr().out
    dataset = minari.load_dataset("mpq/pendulum/sim-v0")
    segments, _ = verified_segments(folder)
    task = get_task("pendulum")
    metadata = list(dataset.storage.get_episode_metadata(range(2)))
    for episode, path, meta in zip(dataset.iterate_episodes(), segments, metadata, strict=True):
        recorded, topics = read_segment(path)
        steps = topics["/transition"]
        np.testing.assert_array_equal(episode.observations[:-1], [s["obs"] for s in steps])
        np.testing.assert_allclose(episode.observations[-1], task.obs(np.array(steps[-1]["next_state"])))
        np.testing.assert_array_equal(episode.actions, np.array([s["action"] for s in steps], dtype=np.float32))
        np.testing.assert_array_equal(episode.rewards, [-s["cost"] for s in steps])
        assert not episode.terminations.any() and episode.truncations[-1] and not episode.truncations[:-1].any()
        assert meta["segment"] == f"sim/{path.name}" and meta["robot"] == "sim"
        assert meta["mppi"] and meta["task"] == "pendulum" and meta["episode"] == recorded["segment"]["episode"]
    assert dataset.spec.env_spec.id == "mpq/Pendulum-v0"
    # the same name again: refused, the dataset untouched
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/sim-v0"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert minari.load_dataset("mpq/pendulum/sim-v0").total_episodes == 2


def test_a_segment_that_fails_its_check_is_never_exported(tmp_path, minari_home, capsys):
    import minari

    from offboard.__main__ import main
    from onboard.loop import run
    from onboard.profile import load_profile

    run(load_profile("sim", log_dir=str(tmp_path / "data")), 2, show_status=False)
    folder = tmp_path / "data" / "sim"
    damaged = sorted(folder.glob("*.mcap"))[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert main(["export-minari", "--data", str(folder), "--name", "mpq/pendulum/damaged-v0"]) == 0
    captured = capsys.readouterr()
    assert "exported 1 episodes" in captured.out and f"left out: {damaged}" in captured.err
    assert minari.load_dataset("mpq/pendulum/damaged-v0").total_episodes == 1
    assert main(["export-minari", "--data", str(tmp_path / "nothing"), "--name", "mpq/pendulum/none-v0"]) == 2
    assert "is not a folder" in capsys.readouterr().err


# --- replay ----------------------------------------------------------------------------------------
def test_a_logged_episode_replays_as_a_video_whose_frames_follow_the_states(tmp_path, capsys):
    import imageio.v2 as imageio

    from offboard.__main__ import main
    from offboard.replay import frames, read_episode
    from onboard.loop import run
    from onboard.profile import load_profile

    run(load_profile("sim", log_dir=str(tmp_path / "data")), 1, show_status=False)
    (segment,) = sorted((tmp_path / "data" / "sim").glob("*.mcap"))
    task, _, topics = read_episode(segment)
    images = list(frames(task, topics, 64, 48))
    assert len(images) == len(topics["/transition"]) + 1 and images[0].shape == (48, 64, 3)
    moved = [np.abs(a.astype(int) - b.astype(int)).sum() for a, b in zip(images[:-1], images[1:], strict=True)]
    assert sum(m > 0 for m in moved) > len(moved) // 2  # the pendulum swings: most frames differ from the last
    out = tmp_path / "episode.mp4"
    assert main(["replay", str(segment), "--out", str(out), "--width", "64", "--height", "48"]) == 0
    assert "201 frames" in capsys.readouterr().out
    assert imageio.get_reader(out).count_frames() == 201 and not list(tmp_path.glob("*.partial*"))
    data = bytearray(segment.read_bytes())  # a listed segment that no longer matches MANIFEST: refused
    data[100] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert main(["replay", str(segment), "--out", str(tmp_path / "bad.mp4")]) == 2
    assert "sha256 does not match MANIFEST" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()
