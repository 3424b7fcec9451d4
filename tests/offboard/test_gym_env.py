"""The Gymnasium environments: each task over a real pty to the firmware stand-in, and in plain MuJoCo."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import offboard.gym_env  # noqa: F401 (registers mpq/<Task>-v0)
from firmware_bridge.dialect import mavlink
from offboard.gym_env import env_id
from onboard.tasks import TASKS


@pytest.fixture
def sim_logs(tmp_path, monkeypatch):
    """The stand-in's log under tmp_path, not in the repository's data/."""
    from onboard import profile

    load = profile.load_profile
    monkeypatch.setattr("offboard.gym_env.load_profile", lambda robot, **kw: load(robot, log_dir=str(tmp_path), **kw))
    return tmp_path


@pytest.mark.parametrize("path", ["link", "mujoco"])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_passes_gymnasiums_checks_on_both_paths(task, path, sim_logs):
    env = gymnasium.make(env_id(task, path), render_mode="rgb_array")
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


def test_the_steps_per_second_command_refuses_no_episodes_in_one_line(capsys):
    assert offboard.gym_env.main(["--episodes", "0"]) == 2
    assert capsys.readouterr().err == "error: --episodes 0: use 1 or more\n"


@pytest.mark.parametrize("path", ["link", "mujoco"])
def test_a_non_finite_action_ends_the_episode_on_both_paths_and_reset_starts_again(path, sim_logs):
    """As the firmware does: the failsafe latches (the actuators off), the episode is truncated with it in info
    (never terminated: that would make tripping a failsafe a way out of the costs); a step after it is an error,
    and reset() re-arms the plant for the next episode."""
    env = gymnasium.make(env_id("pendulum", path))
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(np.array([np.nan], dtype=np.float32))
        assert truncated and not terminated and np.isfinite(reward)
        assert info["failsafe"] == mavlink.MPQ_FAILSAFE_NONFINITE_COMMAND
        with pytest.raises(RuntimeError, match="the episode ended with failsafe 2: call env.reset"):
            env.step(np.array([0.0], dtype=np.float32))
        env.reset(seed=1)
        for _ in range(3):
            _, _, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
            assert not terminated and not truncated and "failsafe" not in info
        with pytest.raises(ValueError, match=r"action of shape \(2,\): pendulum takes \(1,\)"):
            env.step(np.array([1.0, 1.0], dtype=np.float32))
    finally:
        env.close()
    with pytest.raises(RuntimeError, match="step before reset"):
        env.unwrapped.step(np.array([0.0], dtype=np.float32))
