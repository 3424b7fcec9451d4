"""The planner steps the MJCF itself: the mujoco and warp backends against the analytic models and the plant,
biased draws as perturbed MjModels, and a task's bias checked against its MJCF when it loads."""

from __future__ import annotations

import re

import numpy as np
import pytest

from firmware_bridge.plant import MujocoPlant
from onboard.backends import get_backend
from onboard.mppi import MPPI, MPPIConfig
from onboard.tasks import ANALYTIC_TASKS, TASKS, get_task
from onboard.tasks.base import Parameter
from onboard.tasks.pendulum import Pendulum
from tests.gpu import needs_gpu, needs_warp

FLOAT32 = dict(rtol=1e-4, atol=2e-4)  # MuJoCo Warp steps in float32


@pytest.fixture(autouse=True)
def warp_on_the_cpu(monkeypatch):
    """These checks run Warp on the CPU on every machine; test_warp_on_the_gpu runs it on a GPU."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", "cpu")


def rollout_case(task, seed=1, B=3, K=16, H=9):
    rng = np.random.default_rng(seed)
    states = np.stack([task.initial_state(rng) for _ in range(B)])
    actions = rng.uniform(task.u_min, task.u_max, (B, K, H, task.act_dim))
    return states, actions, rng


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
@pytest.mark.parametrize("model", ["biased", "true"])
def test_mujoco_rollouts_equal_the_analytic_model_draw_for_draw(name, model):
    task = get_task(name)
    states, actions, rng = rollout_case(task)
    if name == "cartpole":
        states[0, 1] = 2.3  # next to the rail: MuJoCo's limit against the analytic stop, within their tolerance
    params = task.planner_params(model, (3, 16) if model == "biased" else (), rng)
    cost, last = get_backend("mujoco", task, threads=2).rollout(states, actions, params, 0.9)
    ref_cost, ref_last = get_backend("numpy", task).rollout(states, actions, params, 0.9)
    free = slice(1, None) if name == "cartpole" else slice(None)  # rows that never reach a rail
    np.testing.assert_allclose(cost[free], ref_cost[free], rtol=1e-9)
    np.testing.assert_allclose(last[free], ref_last[free], rtol=1e-9, atol=1e-9)


@needs_warp
@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("model", ["biased", "true"])
def test_warp_rollouts_equal_mujocos_within_float32(name, model):
    task = get_task(name)
    states, actions, rng = rollout_case(task, B=2, K=8)
    params = task.planner_params(model, (2, 8) if model == "biased" else (), rng)
    cost, last = get_backend("warp", task).rollout(states, actions, params, 0.9)
    ref_cost, ref_last = get_backend("mujoco", task, threads=2).rollout(states, actions, params, 0.9)
    np.testing.assert_allclose(cost, ref_cost, **FLOAT32)
    np.testing.assert_allclose(last, ref_last, **FLOAT32)


@needs_warp
def test_what_a_warp_rollout_returns_stays_the_callers_after_the_next_rollout():
    """On a GPU the MPPI's float type is Warp's (float32), where a view of Warp's buffers would be overwritten by the
    next rollout of the same shape: MPQ(lambda) keeps each step's states across its rollouts."""
    task = get_task("pendulum")
    backend = get_backend("warp", task)
    backend.dtype = np.float32  # the GPU's float type, here on the CPU device
    states, actions, rng = rollout_case(task, B=2, K=8, H=3)
    params = task.planner_params("biased", (2, 8), rng)
    _, first = backend.rollout(states, actions, params, 0.9)
    kept = first.copy()
    backend.rollout(states[::-1].copy(), actions[::-1].copy(), params, 0.9)
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("backend", ["mujoco", pytest.param("warp", marks=needs_warp)])
def test_the_true_model_is_the_stand_ins_plant_and_each_draw_moves_its_own_rollout(backend):
    task = get_task("pendulum")
    rng = np.random.default_rng(4)
    start = np.array([0.0, 1.0, 0.5])
    actions = rng.uniform(task.u_min, task.u_max, (1, 1, 11, 1))
    plant = MujocoPlant.for_task("pendulum")
    plant.reset(start)
    for u in actions[0, 0, :10]:
        plant.step(u)
    tolerance = 1e-12 if backend == "mujoco" else 1e-4
    _, last = get_backend(backend, task).rollout(start[None], actions, task.planner_params("true", (), None), 0.9)
    np.testing.assert_allclose(last[0, 0], plant.state, atol=tolerance)
    # a heavier, longer rod falls differently, and row i of a biased rollout is draw i's model alone
    draws = np.array([[[1.0, 0.5], [1.5, 0.75], [0.9, 0.45]]])
    _, biased = get_backend(backend, task).rollout(start[None], np.repeat(actions, 3, axis=1), draws, 0.9)
    assert abs(biased[0, 1, 1] - biased[0, 0, 1]) > 0.05
    np.testing.assert_allclose(biased[0, 0], plant.state, atol=tolerance)
    for i in range(3):
        _, alone = get_backend(backend, task).rollout(start[None], actions, draws[0, i], 0.9)
        np.testing.assert_allclose(biased[0, i], alone[0, 0], atol=tolerance)


@needs_warp
def test_with_the_same_noise_mujoco_and_warp_give_the_same_plan():
    task = get_task("cartpole")
    config = MPPIConfig.for_task(task, K=32, H=10, n_iters=3, seed=3)
    states = np.stack([task.initial_state(np.random.default_rng(i)) for i in range(2)])
    cpu, warp = MPPI(task, config, "mujoco", threads=2).plan(states), MPPI(task, config, "warp").plan(states)
    np.testing.assert_allclose(warp.actions, cpu.actions, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(warp.value, cpu.value, rtol=1e-4)


@pytest.mark.parametrize(
    "field, message",
    [
        ("body_mas[pole]", "MjModel has no array field 'body_mas'"),
        ("body_mass[ball]", "the MJCF has no 'ball' in body_mass"),
        ("body_inertia[pole][7]", "body_inertia has no column 7"),
        ("body_mass[pole", "is not field, field[row] or field[row][col]"),
    ],
)
def test_a_bias_field_the_mjcf_does_not_have_is_one_clear_error_when_the_task_loads(field, message):
    class Misnamed(Pendulum):
        parameters = (Parameter(field, 0.9, 1.5), Parameter("body_ipos[pole][2]", 0.45, 0.75))

    with pytest.raises(ValueError, match=r"task pendulum: bias field .*" + message.replace("[", r"\[")):
        Misnamed()


@pytest.mark.parametrize(
    "parameter, message",
    [
        (Parameter("body_mass[pole]", -0.5, 1.5), "body_mass[pole] from -0.5: a body_mass must be > 0"),
        (Parameter("body_mass[pole]", 0.0, 1.5), "body_mass[pole] from 0: a body_mass must be > 0"),
        (Parameter("dof_damping", -0.1, 0.1), "dof_damping from -0.1: a dof_damping must be >= 0"),
    ],
)
def test_a_bias_range_that_reaches_unphysical_values_is_one_clear_error_when_the_task_loads(parameter, message):
    class Unphysical(Pendulum):
        parameters = (parameter,)

    with pytest.raises(ValueError, match="task pendulum: " + re.escape(message)):
        Unphysical()
    Pendulum()  # the same fields over physical ranges load


@needs_gpu
@needs_warp
def test_warp_on_the_gpu_gives_the_mujoco_backends_plan_with_cupys_noise_replaced(monkeypatch):
    """On a GPU the warp backend's MPPI runs on CuPy: its rollouts equal mujoco's within float32."""
    monkeypatch.delenv("MPQ_WARP_DEVICE")
    import cupy

    task = get_task("cartpole")
    states, actions, rng = rollout_case(task, B=2, K=8)
    params = task.planner_params("biased", (2, 8), rng)
    backend = get_backend("warp", task)
    assert backend.device.startswith("cuda") and backend.xp is cupy
    with backend.scope():
        cost, last = backend.rollout(cupy.asarray(states), cupy.asarray(actions), cupy.asarray(params), 0.9)
    ref_cost, ref_last = get_backend("mujoco", task, threads=2).rollout(states, actions, params, 0.9)
    np.testing.assert_allclose(cupy.asnumpy(cost), ref_cost, **FLOAT32)
    np.testing.assert_allclose(cupy.asnumpy(last), ref_last, **FLOAT32)
    config = MPPIConfig.for_task(task, K=64, H=10, n_iters=3, seed=0)
    u = MPPI(task, config, "warp").act(task.hanging_state())
    assert u.shape == (1,) and np.all(np.isfinite(u))


def test_an_analytic_backend_for_a_task_without_a_closed_form_model_says_which_backends_serve_it():
    class MjcfOnly(Pendulum):
        c_source = None

    with pytest.raises(ValueError, match="has no analytic model for backend 'c': use backend mujoco"):
        MPPI(MjcfOnly(), backend="c")


def test_a_batch_larger_than_the_model_pool_goes_in_chunks_with_the_same_result(monkeypatch):
    """A trainer's held-out set grows with the data: the biased models held at once must not."""
    import onboard.backends.mujoco_backend as mujoco_backend

    task = get_task("ball_in_cup")
    states, actions, rng = rollout_case(task, B=3, K=7, H=5)
    params = task.planner_params("biased", (3, 7), rng)
    whole = get_backend("mujoco", task).rollout(states, actions, params, 0.9)
    monkeypatch.setattr(mujoco_backend, "MAX_MODELS", 4)
    backend = get_backend("mujoco", task)
    chunked = backend.rollout(states, actions, params, 0.9)
    assert len(backend._biased) == 4  # 21 rollouts through 4 models
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
