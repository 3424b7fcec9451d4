"""Tasks: the analytic planner model with the TRUE parameters is the MuJoCo plant, step for step."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.plant import MujocoPlant
from onboard.tasks import ANALYTIC_TASKS, TASKS, get_task
from onboard.tasks.base import wrap_angle

# Both integrate with semi-implicit Euler at the XML's timestep: they agree to rounding.
TRACKING_TOLERANCE = 1e-9


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analytic_true_model_tracks_mujoco_over_one_second_of_random_controls(name, seed):
    task = get_task(name)
    plant = MujocoPlant.for_task(name)
    rng = np.random.default_rng(seed)
    state = plant.reset(task.initial_state(rng))
    model_state = state.copy()
    worst = 0.0
    for _ in range(round(1.0 / task.dt)):
        u = rng.uniform(task.u_min, task.u_max)
        state = plant.step(u)
        model_state = task.step(model_state, u, task.true_params)
        worst = max(worst, float(np.max(np.abs(state - model_state))))
    assert worst < TRACKING_TOLERANCE
    assert np.any(np.abs(state - task.initial_state(np.random.default_rng(seed))) > 0.1), "the plant did not move"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_xml_limits_and_period_agree_with_the_task(name):
    task = get_task(name)
    plant = MujocoPlant.for_task(name)
    assert plant.control_period == pytest.approx(task.dt)
    np.testing.assert_array_equal(plant.ctrl_low, task.u_min)
    np.testing.assert_array_equal(plant.ctrl_high, task.u_max)
    assert plant.state.shape == (task.state_dim,)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_vectorised_functions_keep_leading_axes(name):
    task = get_task(name)
    rng = np.random.default_rng(0)
    s = rng.standard_normal((3, 5, task.state_dim))
    u = rng.uniform(task.u_min, task.u_max, (3, 5, task.act_dim))
    assert task.cost(s, u).shape == (3, 5)
    assert task.obs(s).shape == (3, 5, task.obs_dim)
    assert task.success(s).shape == (3, 5)
    np.testing.assert_array_equal(task.obs(s)[1, 2], task.obs(s[1, 2]))
    assert task.cost(s, u)[1, 2] == task.cost(s[1, 2], u[1, 2])
    if not task.has_analytic_model:
        return
    p = task.planner_params("biased", (3, 5), rng)
    assert task.step(s, u, p).shape == (3, 5, task.state_dim)
    # each sample's parameters act on that sample alone
    one = task.step(s[1, 2], u[1, 2], p[1, 2])
    np.testing.assert_allclose(task.step(s, u, p)[1, 2], one, rtol=1e-12)


def test_pendulum_cost_is_zero_upright_and_wraps_angles():
    task = get_task("pendulum")
    u = np.zeros(1)
    assert task.cost(np.array([0.0, 0.0, 0.0]), u) == 0.0
    assert task.cost(np.array([0.0, 2 * np.pi, 0.0]), u) == pytest.approx(0.0, abs=1e-20)
    assert task.cost(np.array([0.0, np.pi - 0.01, 0.0]), u) == pytest.approx((np.pi - 0.01) ** 2)
    assert task.cost(np.array([5.0, 0.0, 2.0]), u) == pytest.approx(0.4)  # time plays no part
    assert wrap_angle(np.pi) == pytest.approx(-np.pi)
    np.testing.assert_allclose(task.obs(np.array([0.0, np.pi / 2, 3.0])), [0.0, 1.0, 3.0], atol=1e-15)


def test_pendulum_speed_limit_acts_before_the_position_update_as_in_gym():
    task = get_task("pendulum")
    plant = MujocoPlant.for_task("pendulum")
    state = plant.reset(np.array([0.0, 0.0, 7.9]))
    model = state.copy()
    limited_steps = 0
    for _ in range(10):
        time, theta, thetadot = model
        gym_thetadot = np.clip(thetadot + 0.05 * (15.0 * np.sin(theta) + 3.0 * 2.0), -8, 8)
        gym = np.array([time + 0.05, theta + 0.05 * gym_thetadot, gym_thetadot])
        state = plant.step(task.u_max)
        model = task.step(model, task.u_max, task.true_params)
        np.testing.assert_allclose(model, gym, rtol=1e-12)
        np.testing.assert_allclose(state, model, atol=TRACKING_TOLERANCE)
        limited_steps += model[2] == 8.0
    assert limited_steps >= 2  # the limit really acted


# At a rail the analytic cart stops with an impulse; MuJoCo's soft limit spreads the stop over a few
# milliseconds. Positions stay this close over 1 s of pushing into the rail.
RAIL_POSITION_TOLERANCE = 0.05


@pytest.mark.parametrize(
    "start, force",
    [([0, 2.39, 0.3, 1.0, 0.0], 10.0), ([0, 2.2, np.pi, 2.0, 1.0], 10.0), ([0, -2.3, 2.0, -1.5, -2.0], -5.0)],
)
def test_cartpole_model_stops_at_the_rails_like_mujoco(start, force):
    task = get_task("cartpole")
    plant = MujocoPlant.for_task("cartpole")
    state = plant.reset(np.array(start))
    model = state.copy()
    for _ in range(round(1.0 / task.dt)):
        state = plant.step([force])
        model = task.step(model, np.array([force]), task.true_params)
        assert abs(model[1]) <= 2.4 + 1e-12
        np.testing.assert_allclose(model[1:3], state[1:3], atol=RAIL_POSITION_TOLERANCE)
    assert abs(state[1]) == pytest.approx(2.4, abs=1e-3)  # both ended pressed against the rail


def test_planner_model_options():
    task = get_task("pendulum")
    rng = np.random.default_rng(0)
    biased = task.planner_params("biased", (4, 1000), rng)
    assert biased.shape == (4, 1000, 2)
    assert np.all(biased >= task.bias_low) and np.all(biased <= task.bias_high)
    # mass and the rod's centre of mass (half its length): m, l ~ U[0.9, 1.5]
    np.testing.assert_allclose(biased.mean(axis=(0, 1)), [1.2, 0.6], atol=0.02)
    again = task.planner_params("biased", (4, 1000), np.random.default_rng(0))
    np.testing.assert_array_equal(biased, again)
    np.testing.assert_array_equal(task.planner_params("true", (4, 1000), rng), [1.0, 0.5])
    np.testing.assert_array_equal(task.planner_params("mean", (4, 1000), rng), [1.2, 0.6])
    with pytest.raises(ValueError, match="unknown planner model"):
        task.planner_params("exact", (1,), rng)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="cartpole, pendulum"):
        get_task("acrobot")
