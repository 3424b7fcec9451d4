"""BallInCupSparse: the in-cup test is the suite's, measured on MuJoCo's own positions; the starts never touch
the cup; the cup holds a ball dropped into it; the planner's bias is the paper's Table 1 and moves the
ball's rollouts; the task runs over the link to the stand-in like any other."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from firmware_bridge.plant import MujocoPlant, plant_draw
from onboard.backends import get_backend
from onboard.loop import run
from onboard.mppi import MPPI, MPPIConfig
from onboard.profile import load_profile
from onboard.recorder import read_segment, verified_segments
from onboard.tasks import get_task
from tests.gpu import needs_warp

TASK = get_task("ball_in_cup")


def suite_in_target(model, data) -> bool:
    """The DeepMind Control Suite's in-cup test, on MuJoCo's positions (ball_in_cup.py: Physics.in_target)."""
    ball_to_target = np.abs(data.site_xpos[model.site("target").id][[0, 2]] - data.xpos[model.body("ball").id][[0, 2]])
    target_size = model.site_size[model.site("target").id][[0, 2]]
    return bool(np.all(ball_to_target < target_size - model.geom_size[model.geom("ball").id][0]))


def test_cost_obs_and_success_are_the_suites_in_cup_test_on_mujocos_positions():
    model = TASK.mjcf.model
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    states = []
    for i in range(400):  # half of them around the target, so both answers occur often
        cup = rng.uniform(-0.3, 0.3, 2)
        ball = cup + (rng.uniform(-0.04, 0.04, 2) + [0, 0.35] if i % 2 else rng.uniform(-0.3, 0.6, 2))
        states.append(np.concatenate([[0.0], cup, ball, rng.normal(size=4)]))
    states = np.array(states)
    expected, slack = [], []
    for state in states:
        data.qpos[:], data.qvel[:] = state[TASK.qpos], state[TASK.qvel]
        mujoco.mj_forward(model, data)
        expected.append(suite_in_target(model, data))
        slack.append(0.3 - data.ten_length[model.tendon("string").id])
    expected = np.array(expected)
    assert 50 < expected.sum() < 350
    np.testing.assert_array_equal(TASK.success(states), expected)
    np.testing.assert_array_equal(TASK.cost(states, None), np.where(expected, 0.0, 1.0))
    obs = TASK.obs(states)
    assert obs.shape == (400, 12)
    np.testing.assert_array_equal(obs[:, 11], expected)  # the flag
    np.testing.assert_array_equal((obs[:, 8] > 0) & (obs[:, 9] > 0), expected)  # the margins
    np.testing.assert_allclose(obs[:, 10], slack, atol=1e-12)  # the string's slack
    np.testing.assert_allclose(obs[:, 4:8], states[:, 5:9])  # the velocities


def test_starts_are_the_suites_box_and_never_touch_the_cup():
    model = TASK.mjcf.model
    data = mujoco.MjData(model)
    rng = np.random.default_rng(1)
    starts = np.array([TASK.initial_state(rng) for _ in range(300)])
    np.testing.assert_array_equal(starts[:, [0, 1, 2, 5, 6, 7, 8]], 0.0)  # time 0, the cup home, all at rest
    assert np.all((-0.2 <= starts[:, 3]) & (starts[:, 3] <= 0.2) & (0.2 <= starts[:, 4]) & (starts[:, 4] <= 0.5))
    for start in starts:
        data.qpos[:] = start[TASK.qpos]
        mujoco.mj_forward(model, data)
        assert data.ncon == 0
    # the box reaches into the cup's walls: without the redraw some starts would touch it
    box = np.random.default_rng(1).uniform(TASK.mjcf.reset_low, TASK.mjcf.reset_high, (300, 8))
    touching = 0
    for qpos in box[:, :4]:
        data.qpos[:] = qpos
        mujoco.mj_forward(model, data)
        touching += data.ncon > 0
    assert touching > 0
    same_seed = [TASK.initial_state(np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(*same_seed)


def test_the_plants_cup_holds_a_ball_dropped_into_it_and_a_hanging_ball_is_out():
    plant = MujocoPlant.for_task("ball_in_cup")
    state = plant.reset(TASK.mjcf.full_state([0, 0, 0, 0.45], np.zeros(4)))  # the ball 10 cm above the cup's middle
    assert TASK.cost(state, None) == 1.0
    for _ in range(50):  # 1 s at rest
        state = plant.step(np.zeros(2))
    assert TASK.cost(state, None) == 0.0 and TASK.success(state)
    state = plant.reset(TASK.mjcf.full_state([0, 0, 0.1, 0.3], np.zeros(4)))  # beside the cup: to the string's end
    for _ in range(50):
        state = plant.step(np.zeros(2))
    assert TASK.cost(state, None) == 1.0 and abs(TASK.obs(state)[10]) < 0.01  # hanging on a taut string


def test_the_bias_is_the_papers_and_a_heavier_ball_on_a_stiffer_string_moves_differently():
    np.testing.assert_allclose(TASK.true_params, [0.058, 1.47e-5, 0.05])  # read from the MJCF
    np.testing.assert_allclose(TASK.bias_low, [0.0087, 0.22e-5, 0.00375])
    np.testing.assert_allclose(TASK.bias_high, [0.87, 22e-5, 1.5])
    start = TASK.mjcf.full_state([0, 0, 0.15, 0.1], np.zeros(4))  # the string taut, the ball out to the side
    actions = np.random.default_rng(2).uniform(-1, 1, (1, 1, 25, 2))
    draws = np.array([[TASK.true_params, [0.87, 22e-5, 1.5], [0.0087, 0.22e-5, 0.00375]]])
    backend = get_backend("mujoco", TASK)
    _, last = backend.rollout(start[None], np.repeat(actions, 3, axis=1), draws, 0.9)
    plant = MujocoPlant.for_task("ball_in_cup")
    plant.reset(start)
    for u in actions[0, 0, :-1]:
        plant.step(u)
    np.testing.assert_allclose(last[0, 0], plant.state, atol=1e-12)  # the TRUE draw is the plant
    ball = slice(3, 5)
    assert np.abs(last[0, 1, ball] - last[0, 0, ball]).max() > 0.01
    assert np.abs(last[0, 2, ball] - last[0, 0, ball]).max() > 0.001


@pytest.mark.parametrize("backend", ["mujoco", pytest.param("warp", marks=needs_warp)])
def test_a_drawn_model_is_the_mjcf_compiled_with_that_draw(backend, monkeypatch):
    """Writing a heavier ball into the model must also redo what MuJoCo's compiler derives from its mass (the
    string's and the contacts' inverse weights): without it the heavy ball hung on a string as soft as the
    light one's and swung 20 cm away from where the compiled heavy plant went."""
    monkeypatch.setenv("MPQ_WARP_DEVICE", "cpu")
    heavy = [0.87, 1.47e-5, 0.05]
    xml = TASK.xml_path.read_text().replace('mass="0.058"', 'mass="0.87"')
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    start = TASK.mjcf.full_state([0, 0, 0.15, 0.1], np.zeros(4))
    actions = np.random.default_rng(1).uniform(-1, 1, (1, 1, 10, 2))
    mujoco.mj_setState(model, data, start, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    for u in actions[0, 0, :-1]:
        data.ctrl[:] = u
        for _ in range(TASK.mjcf.substeps):
            mujoco.mj_step(model, data)
    compiled = np.concatenate([data.qpos, data.qvel])
    tolerance = 1e-9 if backend == "mujoco" else 2e-4
    for params in (np.array(heavy), np.array([[heavy, heavy]])):  # one shared model, and one per rollout
        rollouts = actions if params.ndim == 1 else np.repeat(actions, 2, axis=1)
        _, last = get_backend(backend, TASK).rollout(start[None], rollouts, params, 0.9)
        np.testing.assert_allclose(last[0, :, 1:], np.broadcast_to(compiled, last[0, :, 1:].shape), atol=tolerance)


def test_ball_in_cup_runs_over_the_link_to_the_stand_in_and_records_its_transitions(tmp_path):
    profile = load_profile("sim", task="ball_in_cup", backend="mujoco", log_dir=str(tmp_path / "data"))
    stats = run(profile, episodes=1, show_status=False)
    assert stats.episodes == 1 and stats.steps == TASK.episode_steps == 200
    (segment,), problems = verified_segments(tmp_path / "data" / "sim")
    assert problems == []
    metadata, topics = read_segment(segment)
    assert metadata["segment"]["task"] == "ball_in_cup"
    steps = topics["/transition"]
    assert len(steps[0]["state"]) == 9 and len(steps[0]["action"]) == 2 and len(steps[0]["obs"]) == 12
    assert {step["cost"] for step in steps} <= {0.0, 1.0}
    cup_moved = np.abs(np.array([step["next_state"][1:3] for step in steps])).max()
    assert cup_moved > 0.01, "the planner never moved the cup"
    assert all(step["cost"] == TASK.cost(np.array(step["state"]), None) for step in steps)


@pytest.mark.parametrize("model", ["biased", "mean", "true"])
def test_every_planner_model_plans_a_bounded_two_dimensional_action(model):
    mppi = MPPI(TASK, MPPIConfig.for_task(TASK, model=model, seed=0), "mujoco")
    action = mppi.act(TASK.initial_state(np.random.default_rng(3)))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)


def test_domain_randomisation_draws_each_episodes_plant_and_the_log_says_which(tmp_path):
    """The paper's DR column: the stand-in's plant drawn per episode from the bias, seeded by (seed, episode); the
    segment records the draw, and the recorded motion is that drawn plant's, not the TRUE one's."""
    profile = load_profile("sim", task="ball_in_cup", backend="mujoco", log_dir=str(tmp_path / "data"), seed=3)
    profile.standin.randomise = True
    profile.mppi = {**profile.mppi, "n_iters": 1}
    run(profile, episodes=2, show_status=False)
    segments, problems = verified_segments(tmp_path / "data" / "sim")
    assert problems == [] and len(segments) == 2
    draws = []
    for segment in segments:
        metadata, topics = read_segment(segment)
        episode = metadata["segment"]["episode"]
        drawn = metadata["segment"]["standin_plant"]
        assert drawn == plant_draw(TASK.bias_ranges, 3, episode)
        assert all(p.low <= drawn[p.field] <= p.high for p in TASK.parameters)
        draws.append(drawn)
        steps = topics["/transition"]
        for params, matches in ((list(drawn.values()), True), (TASK.true_params, False)):  # replay the actions
            plant = MujocoPlant.for_task("ball_in_cup")
            TASK.write_params(plant.model, params)
            mujoco.mj_setConst(plant.model, plant.data)
            plant.reset(np.array(steps[0]["state"]))
            replayed = np.array([plant.step(np.array(step["action"])) for step in steps])
            recorded = np.array([step["next_state"] for step in steps])
            assert np.allclose(replayed, recorded, atol=1e-5) == matches  # float32 on the wire
    assert draws[0] != draws[1]
