"""MPPI: swing-up behaviour, backends agreeing on the same noise, the free energy, bounds, warm start."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.plant import MujocoPlant
from offboard.onnx_mlp import random_mlp
from onboard.backends import get_backend
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.tasks import ANALYTIC_TASKS, get_task
from onboard.tasks.base import wrap_angle
from tests.conftest import NumpyQ
from tests.gpu import ALL_BACKENDS, CPU_BACKENDS, needs_gpu, needs_warp

RTOL = 1e-6  # the fast backend against the float64 reference


SWING_UP_RUNS = [
    ("numpy", 0, 1024),
    ("numpy", 1, 1024),
    ("numpy", 2, 1024),
    # The planner steps the MJCF itself: MuJoCo's own rollouts, or MuJoCo Warp's on the CPU (float32, as on a GPU;
    # one thread), 64 of them (a full step costs microseconds, not an analytic step's nanoseconds; 64 swing up from
    # every seed tried, 0-3)
    ("mujoco", 0, 64),
    pytest.param("warp", 0, 64, marks=needs_warp),
    *(pytest.param("cupy", s, 1024, marks=needs_gpu) for s in (0, 1)),
]


@pytest.mark.long
@pytest.mark.parametrize("backend, seed, K", SWING_UP_RUNS)
def test_pendulum_swings_up_and_holds_with_the_true_model(backend, seed, K):
    """MPPI, true model, H=32, on the MuJoCo plant from hanging down, 10 s (float32 on the GPU)."""
    task = get_task("pendulum")
    mppi = MPPI(task, MPPIConfig.for_task(task, K=K, H=32, model="true", seed=seed), backend)
    plant = MujocoPlant.for_task("pendulum")
    state = plant.reset(task.hanging_state())
    angles = []
    for _ in range(task.episode_steps):
        state = plant.step(mppi.act(state))
        angles.append(wrap_angle(state[1]))
    last_two_seconds = np.abs(angles[-round(2.0 / task.dt) :])
    assert last_two_seconds.max() < 0.1


@pytest.mark.long
@pytest.mark.parametrize(
    "backend, seed, K",
    # the task's K on the analytic backend; 32 rollouts on the MJCF backends (swing up from every seed tried, 0-3)
    [("c", 0, 128), ("c", 1, 128), ("mujoco", 0, 32), pytest.param("warp", 0, 32, marks=needs_warp)],
)
def test_cartpole_swings_up_at_the_long_horizon_with_the_true_model(backend, seed, K):
    task = get_task("cartpole")
    config = MPPIConfig.for_task(task, K=K, H=task.long_horizon, model="true", seed=seed)
    mppi = MPPI(task, config, backend)
    plant = MujocoPlant.for_task("cartpole")
    state = plant.reset(task.hanging_state())
    upright = []
    for _ in range(task.episode_steps):
        state = plant.step(mppi.act(state))
        upright.append(bool(task.success(state)))
    assert all(upright[-round(1.0 / task.dt) :])  # the last second upright, cart between the rails


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
def test_c_rollout_matches_numpy_reference(name):
    task = get_task(name)
    rng = np.random.default_rng(1)
    B, K, H = 3, 50, 12
    states = np.stack([task.initial_state(rng) for _ in range(B)])
    if name == "cartpole":
        states[0, 1] = 2.3  # next to the rail, so the rail stop is exercised too
    actions = rng.uniform(task.u_min, task.u_max, (B, K, H, task.act_dim))
    for params in (task.planner_params("biased", (B, K), rng), task.planner_params("true", (B, K), rng)):
        ref_cost, ref_last = get_backend("numpy", task).rollout(states, actions, params, 0.9)
        cost, last = get_backend("c", task).rollout(states, actions, params, 0.9)
        np.testing.assert_allclose(cost, ref_cost, rtol=1e-10)
        np.testing.assert_allclose(last, ref_last, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
@pytest.mark.parametrize("with_q", [False, True])
def test_fast_backend_gives_the_reference_actions_on_the_same_noise(name, with_q):
    task = get_task(name)
    q = None
    if with_q:
        q = NumpyQ(random_mlp(np.random.default_rng(0), task.obs_dim + task.act_dim, (32, 32)))
    config = MPPIConfig.for_task(task, K=64, H=10, n_iters=3, seed=7)
    reference, fast = MPPI(task, config, "numpy", q=q), MPPI(task, config, "c", q=q)
    states = np.stack([task.initial_state(np.random.default_rng(i)) for i in range(4)])
    ref_plan, fast_plan = reference.plan(states), fast.plan(states)
    np.testing.assert_allclose(fast_plan.actions, ref_plan.actions, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(fast_plan.value, ref_plan.value, rtol=RTOL)
    # and closed loop, warm-started, on the reference model
    state = task.hanging_state()
    for _ in range(20):
        u_ref, u_fast = reference.act(state), fast.act(state)
        np.testing.assert_allclose(u_fast, u_ref, rtol=RTOL, atol=1e-9)
        state = task.step(state, u_ref, task.true_params)


class FixedNormal:
    """Stands in for the planner's noise generator: hands out the given standard normals."""

    def __init__(self, values):
        self.values = values

    def standard_normal(self, shape, dtype=np.float64):
        assert shape == self.values.shape
        return self.values.copy()


@pytest.mark.parametrize("backend", CPU_BACKENDS)  # the GPU's float32 is held to numpy in test_cupy_backend.py
@pytest.mark.parametrize("with_q", [True, False])
def test_one_iteration_equals_mpq_equations_computed_by_hand(backend, with_q):
    """Eqs. 16-18 sample by sample: H-1 discounted costs, gamma^(H-1) Q on the LAST action (or the last
    step's cost without Q), the undiscounted control cost on the CLIPPED perturbation, max-subtracted
    weights, the alpha step, and the free energy."""
    task = get_task("pendulum")
    K, H, sigma, lam, alpha, gamma = 6, 3, 4.0, 0.7, 0.6, 0.5
    config = MPPIConfig(K=K, H=H, sigma=sigma, temperature=lam, alpha=alpha, gamma=gamma, model="true")

    def q(obs, act):
        return 1.3 * obs[:, 0] + 0.1 * obs[:, 2] + 0.7 * act[:, 0] ** 2 + 0.4 * act[:, 0]

    mppi = MPPI(task, config, backend, q=q if with_q else None)
    z = np.random.default_rng(11).standard_normal((1, K, H, 1))
    mppi.noise_rng = FixedNormal(z)
    s0, U0 = np.array([0.0, 2.5, -0.7]), np.array([[0.5], [-1.0], [1.5]])
    plan = mppi.plan(s0[None], U0[None])

    S, perturbations, clipped = np.zeros(K), np.zeros((K, H, 1)), 0
    for n in range(K):
        a = np.clip(U0 + np.sqrt(sigma) * z[0, n], -2.0, 2.0)
        clipped += np.any(np.abs(a) == 2.0)
        e = a - U0
        s = s0
        for t in range(H - 1):
            S[n] += gamma**t * task.cost(s, a[t])
            s = task.step(s, a[t], task.true_params)
        last = q(task.obs(s)[None], a[H - 1][None])[0] if with_q else task.cost(s, a[H - 1])
        S[n] += gamma ** (H - 1) * last
        S[n] += lam * sum(0.5 * U0[t, 0] / sigma * (U0[t, 0] + 2 * e[t, 0]) for t in range(H))
        perturbations[n] = e
    assert clipped >= 2  # the clipped perturbation matters in this case
    w = np.exp(-(S - S.min()) / lam)
    w /= w.sum()
    expected_mean = U0 + alpha * np.einsum("n,nhm->hm", w, perturbations)
    expected_value = -lam * np.log(np.mean(np.exp(-S / lam)))

    np.testing.assert_allclose(plan.weights[0], w, rtol=1e-10)
    np.testing.assert_allclose(plan.actions[0], np.clip(expected_mean, -2, 2), rtol=1e-10)
    assert plan.value[0] == pytest.approx(expected_value, rel=1e-10)
    assert plan.min_cost[0] == pytest.approx(S.min(), rel=1e-10)
    assert plan.ess[0] == pytest.approx(1 / np.sum(w**2), rel=1e-10)


def test_a_nonfinite_q_gets_zero_weight_and_never_reaches_the_action():
    task = get_task("pendulum")

    def half_broken_q(obs, act):
        q = np.zeros(len(act))
        q[::2] = np.nan
        return q

    mppi = MPPI(task, MPPIConfig.for_task(task, K=16, n_iters=1), "numpy", q=half_broken_q)
    u = mppi.act(task.hanging_state())
    plan = mppi.last_plan
    assert np.isfinite(u).all() and np.isfinite(mppi.mean).all()
    assert plan.nonfinite[0] == 8 and np.all(plan.weights[0, ::2] == 0)
    assert np.isfinite(plan.value[0]) and plan.ess[0] >= 1

    mppi.q = lambda obs, act: np.full(len(act), np.inf)
    before = mppi.mean.copy()
    plan = mppi.plan(np.array([task.hanging_state()]), before[None])
    assert plan.nonfinite[0] == 16 and plan.value[0] == np.inf and plan.ess[0] == 0
    np.testing.assert_array_equal(plan.actions[0], before)  # nothing to learn from: the mean stands


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_misshapen_inputs_are_refused_not_misread(backend):
    task = get_task("cartpole")
    mppi = MPPI(task, MPPIConfig.for_task(task), backend)
    with pytest.raises(ValueError, match=r"states must be \(B, 5\)"):
        mppi.plan(task.hanging_state())
    with pytest.raises(ValueError, match="mean must be"):
        mppi.plan(task.hanging_state()[None], np.zeros((1, 3, 1)))
    rollout = get_backend(backend, task).rollout
    with pytest.raises(ValueError, match=r"states \(1, 5\) are not \(B=50, 5\)"):
        rollout(np.zeros((1, 5)), np.zeros((50, 4, 3, 1)), task.true_params, 0.9)
    with pytest.raises(ValueError, match="params"):
        rollout(np.zeros((2, 5)), np.zeros((2, 4, 3, 1)), np.zeros((4, 3)), 0.9)


@pytest.mark.parametrize("mean", [0.0, 0.3])
def test_free_energy_matches_closed_form_for_h1(mean):
    """H=1, Q(a) = c0 + k a^2 / 2, a ~ N(u, Sigma): V = c0 + lam/2 log(1 + k Sigma / lam), for any u.

    The control-cost term is the importance weight that makes V independent of the sampling mean.
    """
    task = get_task("pendulum")
    c0, k, sigma, lam = 1.0, 2.0, 0.25, 0.15
    config = MPPIConfig.for_task(task, K=20000, H=1, sigma=sigma, temperature=lam, alpha=1.0, seed=3)
    mppi = MPPI(task, config, "numpy", q=lambda obs, act: c0 + 0.5 * k * act[:, 0] ** 2)
    B = 16
    plan = mppi.plan(np.zeros((B, 3)), np.full((B, 1, 1), mean))
    expected = c0 + 0.5 * lam * np.log(1 + k * sigma / lam)
    assert plan.value.mean() == pytest.approx(expected, rel=2e-3)
    # with alpha = 1 the new mean is that of p0(a) exp(-Q(a)/lam), p0 the zero-mean prior: 0, from any start
    assert plan.actions[:, 0, 0].mean() == pytest.approx(0.0, abs=0.01)


def test_the_value_is_a_soft_minimum_of_the_sample_costs():
    task = get_task("pendulum")
    config = MPPIConfig.for_task(task, K=256, H=4, model="true", seed=0)
    plan = MPPI(task, config, "numpy").plan(np.array([[0.0, 0.5, 0.0]]))
    assert plan.min_cost[0] < plan.value[0] < plan.min_cost[0] + config.temperature * np.log(config.K)
    assert 1.0 < plan.ess[0] < config.K
    np.testing.assert_allclose(plan.weights.sum(axis=1), 1.0)


def test_batched_plans_are_independent_per_state():
    """Row b of a batched plan is the plan of state b alone on the same noise (one iteration)."""
    task = get_task("pendulum")
    config = MPPIConfig.for_task(task, K=128, H=8, n_iters=1, seed=5)
    states = np.array([[0.0, 3.0, 0.0], [0.0, 0.2, -1.0], [0.0, -1.5, 2.0]])
    batched = MPPI(task, config, "numpy").plan(states)
    alone = MPPI(task, config, "numpy").plan(states[:1])
    np.testing.assert_allclose(batched.actions[0], alone.actions[0], rtol=1e-12)
    assert batched.value[0] == pytest.approx(alone.value[0], rel=1e-12)
    assert batched.actions.shape == (3, 8, 1) and batched.value.shape == (3,)
    assert not np.allclose(batched.value[0], batched.value[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_sampled_action_is_clipped_to_the_bounds(backend):
    task = get_task("cartpole")
    seen = []

    def recording_cost(s, u):
        seen.append(u.copy())
        return np.zeros(u.shape[:-1])

    task.cost = recording_cost  # the planner model's running cost sees actions 0..H-2 (numpy backend)
    seen_q = []

    def recording_q(obs, act):
        seen_q.append(act.copy())
        return np.zeros(len(act))

    mppi = MPPI(task, MPPIConfig.for_task(task, sigma=1e4, K=32, H=6, n_iters=2), backend, q=recording_q)
    mppi.plan(np.zeros((2, 5)), np.full((2, 6, 1), 9.0))
    sampled = np.concatenate([a.reshape(-1) for a in seen + seen_q])
    assert sampled.min() == task.u_min[0] and sampled.max() == task.u_max[0]  # clipped, not dropped


def test_act_warm_starts_by_shifting_the_mean():
    task = get_task("pendulum")
    mppi = MPPI(task, MPPIConfig.for_task(task, seed=0))
    u = mppi.act(task.hanging_state())
    sequence = mppi.last_plan.actions[0]
    np.testing.assert_array_equal(u, sequence[0])
    np.testing.assert_array_equal(mppi.mean[:-1], sequence[1:])
    np.testing.assert_array_equal(mppi.mean[-1], 0.0)
    mppi.reset()
    assert not mppi.mean.any()


def test_seeds_and_planner_models_change_the_plan_reproducibly():
    task = get_task("pendulum")
    state = np.array([[0.0, 2.0, 0.5]])

    def value(**kw):
        return MPPI(task, MPPIConfig.for_task(task, K=64, **kw)).plan(state).value[0]

    assert value(seed=1) == value(seed=1)
    assert value(seed=1) != value(seed=2)
    assert len({value(seed=1, model=m) for m in ("biased", "mean", "true")}) == 3


@pytest.mark.parametrize("name", ANALYTIC_TASKS)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("with_q", [False, True])
def test_plans_for_every_task_and_backend_with_or_without_an_onnx_q(name, backend, with_q, make_q):
    task = get_task(name)
    q = OnnxQ(make_q(name)[0], task) if with_q else None
    mppi = MPPI(task, MPPIConfig.for_task(task), backend, q=q)
    u = mppi.act(task.hanging_state())
    assert u.shape == (task.act_dim,) and np.all(np.isfinite(u))
    assert np.isfinite(mppi.last_plan.value[0])


def test_bad_settings_are_named_in_one_error():
    with pytest.raises(ValueError, match=r"K=0 must be >= 1; temperature=-1.0 must be > 0 and finite"):
        MPPIConfig(K=0, temperature=-1.0)
    with pytest.raises(ValueError, match=r"temperature=inf must be > 0 and finite; sigma=\[1.0, inf\] must be > 0"):
        MPPIConfig(temperature=float("inf"), sigma=[1.0, float("inf")])  # NaN weights, or bang-bang noise
    with pytest.raises(ValueError, match="model='exact'"):
        MPPIConfig(model="exact")
    with pytest.raises(ValueError, match=r"noise_filter=\[1, 2\] must be three numbers"):
        MPPIConfig(noise_filter=[1, 2])
    assert MPPIConfig(noise_filter=[0.25, 0.8, 0]).noise_filter == (0.25, 0.8, 0.0)  # a TOML list is a tuple


@pytest.mark.parametrize("noise_filter, correlated", [((1.0, 0.0, 0.0), False), ((0.25, 0.8, 0.0), True)])
def test_the_noise_filter_smooths_the_samples_along_the_horizon_from_the_third_step(noise_filter, correlated):
    """The paper's authors' MPPI samples eps_t <- b0 eps_t + b1 eps_(t-1) + b2 eps_(t-2) (t >= 2): slow pushes
    that can swing a plant; white noise at 50 Hz only shakes it."""
    task = get_task("pendulum")
    config = MPPIConfig.for_task(task, K=4096, H=6, n_iters=1, sigma=1e-4, noise_filter=noise_filter)
    mppi = MPPI(task, config, "numpy")
    seen = []
    rollout = mppi.backend.rollout
    mppi.backend.rollout = lambda states, actions, *rest: seen.append(actions.copy()) or rollout(states, actions, *rest)
    mppi.act(task.hanging_state())
    eps = seen[0][0, :, :, 0]  # (K, H): the mean is zero on the first plan, and nothing is clipped
    lag_one = [np.corrcoef(eps[:, t], eps[:, t - 1])[0, 1] for t in range(1, 6)]
    assert abs(lag_one[0]) < 0.05  # the first two steps are drawn as they are
    assert all((r > 0.7) if correlated else (abs(r) < 0.05) for r in lag_one[1:]), lag_one


def smooth_q(obs, act):
    """A made-up Q that depends on every input, so that each step's Q shows in the blend."""
    return 3.0 * obs[:, 0] - obs[:, 1] + 0.1 * obs[:, 2] ** 2 + 0.5 * act[:, 0]


@pytest.mark.parametrize("backend", ["numpy", "c", "mujoco"])
@pytest.mark.parametrize("td_lambda", [0.0, 0.3, 0.9])
def test_mpq_lambda_blends_the_k_step_returns_closed_by_q(backend, td_lambda):
    """G = (1 - lambda) sum_k lambda^(k-1) R_k + lambda^(H-2) R_(H-1), R_k the k-step return closed by Q(s_k, a_k):
    computed here from the task's own step, independently of the planner's recursive form."""
    task = get_task("pendulum")
    config = MPPIConfig.for_task(task, K=5, H=5, td_lambda=td_lambda, model="true")
    mppi = MPPI(task, config, backend, q=smooth_q)
    rng = np.random.default_rng(0)
    states = np.stack([task.initial_state(rng) for _ in range(2)])
    actions = rng.uniform(-2, 2, size=(2, 5, 5, 1))
    blended = mppi.blended_return(states, actions, mppi.fixed_params)

    gamma, H, lam = config.gamma, config.H, td_lambda
    for b in range(2):
        for k in range(5):
            s, costs, returns = states[b], [], []
            for t in range(H - 1):
                costs.append(float(task.cost(s, actions[b, k, t])))
                s = task.step(s, actions[b, k, t], task.true_params)
                q = smooth_q(task.obs(s)[None], actions[b, k, t + 1][None])[0]
                returns.append(sum(gamma**i * c for i, c in enumerate(costs)) + gamma ** (t + 1) * q)
            expected = (1 - lam) * sum(lam**i * r for i, r in enumerate(returns[:-1])) + lam ** (H - 2) * returns[-1]
            assert blended[b, k] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_mpq_lambda_one_is_the_papers_mpq():
    task = get_task("pendulum")
    state = task.hanging_state()[None]
    plans = []
    for td_lambda in (1.0, 1.0 - 1e-12):  # the single return, and the blend at (numerically) lambda = 1
        mppi = MPPI(task, MPPIConfig.for_task(task, td_lambda=td_lambda), "numpy", q=smooth_q)
        plans.append(mppi.plan(state))
    np.testing.assert_allclose(plans[0].actions, plans[1].actions, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(plans[0].value, plans[1].value, rtol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_noise_drawn_ahead_while_the_plant_steps_leaves_every_action_as_it_was(backend):
    """The loop draws the next plan's noise while it waits for the plant: the same numbers in the same order,
    so acting with it gives the very actions acting without it gives."""
    task = get_task("pendulum")
    config = MPPIConfig.for_task(task, K=32, H=8, n_iters=3, seed=5)
    plain, ahead = MPPI(task, config, backend), MPPI(task, config, backend)
    state = task.hanging_state()
    for t in range(30):
        u_plain, u_ahead = plain.act(state), ahead.act(state)
        np.testing.assert_array_equal(u_ahead, u_plain)
        ahead.draw_ahead()
        if t % 7 == 3:
            ahead.draw_ahead()  # a second call before the plan draws nothing more
        state = task.step(state, u_plain, task.true_params)
    assert len(ahead._drawn) == 3 and plain._drawn == []
    # a plan of another shape (a batch) while numbers wait: the generator goes back, the order stays
    states = np.stack([task.initial_state(np.random.default_rng(i)) for i in range(4)])
    np.testing.assert_array_equal(ahead.plan(states).actions, plain.plan(states).actions)
    np.testing.assert_array_equal(ahead.act(state), plain.act(state))


@pytest.mark.parametrize("explore, correlation", [((1.0, 0.0, 0.0), 0.0), ((0.25, 0.8, 0.0), 0.8)])
def test_exploring_acts_on_the_plan_plus_smoothed_noise_and_leaves_the_plans_alone(explore, correlation):
    """While collecting training data the loop may act on a sample around the plan: the plan's first action plus
    e_t = b0 n_t + b1 e_(t-1) + b2 e_(t-2), n_t ~ N(0, sigma). The plans themselves (and so the warm start and the
    planner's own noise) are those of a planner that does not explore."""
    task = get_task("pendulum")
    sigma = 0.01  # std 0.1: far inside the +-2 bounds, so nothing is clipped
    plain = MPPI(task, MPPIConfig.for_task(task, K=16, H=4, n_iters=1, sigma=sigma, seed=3))
    exploring = MPPI(task, MPPIConfig.for_task(task, K=16, H=4, n_iters=1, sigma=sigma, seed=3, explore=explore))
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(3000):
        state = task.initial_state(rng)
        plan, explored_plan = plain.propose(state), exploring.propose(state)
        np.testing.assert_array_equal(explored_plan.actions, plan.actions)
        u, u_explored = plain.commit(plan), exploring.commit(explored_plan)
        np.testing.assert_array_equal(u, plan.actions[0, 0])
        offsets.append(u_explored[0] - u[0])
    offsets = np.array(offsets)
    b0, b1, _ = explore
    std = np.sqrt(sigma) * b0 / np.sqrt(1 - b1**2)  # the AR(1) process's stationary spread
    assert offsets[100:].std() == pytest.approx(std, rel=0.1)
    assert np.corrcoef(offsets[101:], offsets[100:-1])[0, 1] == pytest.approx(correlation, abs=0.06)
    exploring.reset()  # a new episode starts its exploration noise afresh
    assert np.all(exploring._explored == 0)


def test_exploration_is_clipped_to_the_bounds_and_checked_like_the_filter():
    task = get_task("pendulum")
    mppi = MPPI(task, MPPIConfig.for_task(task, K=8, H=4, sigma=1e4, explore=(1, 0, 0)))
    actions = np.array([mppi.act(task.hanging_state()) for _ in range(50)])
    assert np.all(actions >= task.u_min) and np.all(actions <= task.u_max) and np.any(np.abs(actions) == 2.0)
    with pytest.raises(ValueError, match=r"explore=\[1, 2\] must be three numbers"):
        MPPIConfig(explore=[1, 2])
    with pytest.raises(ValueError, match=r"explore=\(1.0, 1.5, 0.0\) must be a stable filter"):
        MPPIConfig(explore=(1, 1.5, 0))  # e_t = n_t + 1.5 e_(t-1) grows without limit
    assert MPPIConfig(explore=[0.25, 0.8, 0]).explore == (0.25, 0.8, 0.0)
