"""Infinite-horizon MPPI (docs/algorithm.md, Eqs. 16-18), batched over B start states x K samples x H steps.

The terminal value takes the LAST action: a horizon of H is H-1 simulated costs plus
gamma^(H-1) Q(s_{H-1}, a_{H-1}). Without a Q (plain MPPI) the last step's own cost stands in its
place, so plain MPPI with horizon H sees H simulated costs. The same code acts on the robot
(`act`, B = 1, warm-started) and computes the trainer's soft-Bellman targets (`plan` over a
minibatch of states; `Plan.value` is the free energy V(s)). It runs on the backend's arrays (`xp`:
NumPy, or CuPy on the GPU, where the whole plan stays on the device and one packed copy brings the
plan to the host at the end: the only host synchronisation of a control step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from onboard.backends import get_backend
from onboard.tasks.base import Task

QFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs[N, d], act[N, m]) -> q[N]


def _raise_problems(problems: list[tuple[str, str]], config) -> None:
    if problems:
        raise ValueError(
            "MPPI settings: " + "; ".join(f"{name}={getattr(config, name)!r} must be {rule}" for name, rule in problems)
        )


def _stable(coefficients) -> bool:
    """Whether e_t = b0 n_t + b1 e_(t-1) + b2 e_(t-2) stays bounded (its AR(2) roots inside the unit circle): run
    over a whole episode, an unstable filter would grow the exploration noise without limit."""
    try:
        _, b1, b2 = (float(b) for b in coefficients)
    except (TypeError, ValueError):
        return True  # the kind check names it
    return abs(b2) < 1 and b1 + b2 < 1 and b2 - b1 < 1


def free_energy(S, temperature: float, xp=np):
    """MPPI's soft minimum over its samples' costs S (B, K):

        V = -lambda log (1/K) sum_n exp(-S_n / lambda)        w_n = exp(-S_n / lambda) / sum_k exp(-S_k / lambda)

    with lambda the temperature.

    V is the free energy of the start state, the value MPQ's soft Q learns (offboard/mpq.py); w are the
    weights of MPPI's update. One max-subtracted exponential serves both (the best sample gets 1). A state whose
    samples are all inf keeps weights 0 (its mean does not move) and gets V = inf. -> V (B,), w (B, K), and the
    lowest cost min_n S_n (B,) that the exponential is shifted by."""
    S_min = S.min(axis=1, keepdims=True)
    shift = xp.where(xp.isfinite(S_min), S_min, 0.0)
    z = xp.exp((shift - S) / temperature)
    z_sum = xp.maximum(z.sum(axis=1, keepdims=True), 1.0)  # >= 1 already wherever a sample is finite
    return S_min[:, 0] - temperature * xp.log(z_sum[:, 0] / S.shape[1]), z / z_sum, S_min[:, 0]


RENAMED = {"lam": "temperature"}  # settings' old names, which older profiles and q.json files may still carry


@dataclass(frozen=True)
class MPPIConfig:
    """MPPI settings; `for_task` starts from the paper's values for the task (docs/algorithm.md, Table 3).

    Frozen: a planner's settings are fixed when it is made (on the GPU they are baked into its CUDA graphs)."""

    K: int = 24  # samples per start state
    H: int = 8  # horizon, counting the terminal step
    sigma: float | tuple[float, ...] = 4.0  # sampling noise covariance (diagonal, per action dim)
    temperature: float = 0.15  # lambda: how sharply the weights favour the low-cost samples
    alpha: float = 0.5  # step size of the mean update
    gamma: float = 0.9  # discount
    n_iters: int = 1  # MPPI iterations per plan
    # MPQ(lambda): each sample's cost blends its k-step returns, each closed by the Q at step k, with weights
    # (1 - td_lambda) td_lambda^(k-1) (docs/algorithm.md). 1: the paper's MPQ, the Q closes the horizon only.
    td_lambda: float = 1.0
    # The sampled noise smoothed along the horizon, as the paper's authors' MPPI (mjmpc) samples it:
    # eps_t <- b0 eps_t + b1 eps_(t-1) + b2 eps_(t-2) for t >= 2, in order (an autoregressive filter). (1, 0, 0): white
    # noise, which at a 20 ms control period shakes a plant rather than swinging it.
    noise_filter: tuple[float, float, float] = (1.0, 0.0, 0.0)
    # Exploration while collecting training data (the paper's authors' "sample" mode): act on the plan's first
    # action plus e_t = b0 n_t + b1 e_(t-1) + b2 e_(t-2), n_t ~ N(0, sigma) fresh each control step, clipped to the
    # bounds. (0, 0, 0): act on the plan itself (evaluation, deployment). (1, 0, 0) is mjmpc's sample mode;
    # (0.25, 0.8, 0) pushes the plant for a few tenths of a second at a time, which a swing needs. Not a trained
    # setting: the Q is the value of the plan, whatever was acted while its data was collected.
    explore: tuple[float, float, float] = (0.0, 0.0, 0.0)
    model: str = "biased"  # planner parameters: "biased" (per rollout), "mean", or "true"
    seed: int | None = 0

    def __post_init__(self):
        integer = (int, np.integer)
        real = (int, float, np.integer, np.floating)
        kinds = [
            (name, isinstance(value, kind) and not isinstance(value, bool), rule)
            for name, value, kind, rule in [
                ("K", self.K, integer, "a whole number"),
                ("H", self.H, integer, "a whole number"),
                ("n_iters", self.n_iters, integer, "a whole number"),
                ("temperature", self.temperature, real, "a number"),
                ("alpha", self.alpha, real, "a number"),
                ("gamma", self.gamma, real, "a number"),
                ("td_lambda", self.td_lambda, real, "a number"),
            ]
        ]
        if self.seed is not None:
            kinds.append(("seed", isinstance(self.seed, integer) and not isinstance(self.seed, bool), "a whole number"))
        try:
            sigma_ok = np.asarray(self.sigma, dtype=np.float64).ndim <= 1 and not isinstance(self.sigma, bool)
        except (TypeError, ValueError):
            sigma_ok = False
        kinds.append(("sigma", sigma_ok, "a number or a list of numbers (one per action dim)"))
        for name, example in (("noise_filter", "([1, 0, 0]: white)"), ("explore", "([0, 0, 0]: act on the plan)")):
            try:
                coefficients = tuple(float(b) for b in getattr(self, name))
                filter_ok = len(coefficients) == 3 and bool(np.all(np.isfinite(coefficients)))
            except (TypeError, ValueError):
                filter_ok = False
            kinds.append((name, filter_ok, f"three numbers b0, b1, b2, e.g. [0.25, 0.8, 0.0] {example}"))
            if filter_ok:  # a TOML list or a JSON round trip: one hashable tuple of floats, as the default
                object.__setattr__(self, name, coefficients)
        _raise_problems([(name, rule) for name, ok, rule in kinds if not ok], self)
        _raise_problems(
            [
                (name, rule)
                for name, ok, rule in [
                    ("K", self.K >= 1, ">= 1"),
                    ("H", self.H >= 1, ">= 1"),
                    ("n_iters", self.n_iters >= 1, ">= 1"),
                    ("temperature", 0 < self.temperature < np.inf, "> 0 and finite"),
                    ("sigma", bool(np.all((np.asarray(self.sigma) > 0) & np.isfinite(self.sigma))), "> 0 and finite"),
                    ("alpha", 0 < self.alpha <= 1, "in (0, 1]"),
                    ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
                    ("td_lambda", 0 <= self.td_lambda <= 1, "in [0, 1]"),
                    ("explore", _stable(self.explore), "a stable filter: |b2| < 1, b1 + b2 < 1 and b2 - b1 < 1"),
                    ("model", self.model in ("biased", "mean", "true"), "'biased', 'mean' or 'true'"),
                    ("seed", self.seed is None or self.seed >= 0, ">= 0"),
                ]
                if not ok
            ],
            self,
        )

    @classmethod
    def for_task(cls, task: Task, **overrides) -> MPPIConfig:
        known = {f.name for f in fields(cls)}
        for old in sorted(set(overrides) & set(RENAMED)):
            raise ValueError(f"{old} is now called {RENAMED[old]}: rename it (same value, same meaning)")
        for given, what in ((task.mppi_defaults, f"task {task.name}'s mppi_defaults: "), (overrides, "")):
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(
                    f"{what}unknown MPPI setting(s) {', '.join(unknown)}: the settings are {', '.join(sorted(known))}"
                )
        config = cls(**{**task.mppi_defaults, **overrides})
        if np.size(config.sigma) not in (1, task.act_dim):
            raise ValueError(
                f"MPPI settings: sigma={config.sigma!r} has {np.size(config.sigma)} values: give one, or one per "
                f"action dim ({task.act_dim} for {task.name})"
            )
        return config

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    actions: np.ndarray  # (B, H, m) the updated mean sequences, within bounds
    value: np.ndarray  # (B,) free energy V(s) = -lambda log mean_n exp(-S_n / lambda), last iteration
    ess: np.ndarray  # (B,) effective sample size 1 / sum w^2, last iteration
    min_cost: np.ndarray  # (B,) lowest sample cost S, last iteration
    nonfinite: np.ndarray  # (B,) samples whose cost was NaN or inf (given zero weight), all iterations
    seconds: float = 0.0
    # On the backend's arrays; on the GPU these two are overwritten by the next plan of the same shape.
    weights: np.ndarray = field(default=None, repr=False)  # (B, K), last iteration
    device_actions: np.ndarray = field(default=None, repr=False)  # `actions`, where the backend computed them


class MPPI:
    def __init__(
        self, task: Task, config: MPPIConfig | None = None, backend: str = "numpy", q=None, threads: int | None = None
    ):
        """threads: the CPU threads the MuJoCo backend steps with (None: every core)."""
        self.task = task
        self.config = config or MPPIConfig.for_task(task)
        self.backend = get_backend(backend, task, threads)
        xp, dtype = self.xp, self.dtype = self.backend.xp, self.backend.dtype
        self.q = None if q is None else self.backend.device_q(q)
        m = task.act_dim
        variance = np.broadcast_to(np.asarray(self.config.sigma, dtype=np.float64), (m,))
        self.std = xp.asarray(np.sqrt(variance), dtype=dtype)
        self.sigma_inv = xp.asarray(1.0 / variance, dtype=dtype)
        self.u_min, self.u_max = xp.asarray(task.u_min, dtype=dtype), xp.asarray(task.u_max, dtype=dtype)
        self.reseed(self.config.seed)
        self._explore_std = np.sqrt(variance)  # on the host, where the acted action is
        self._explored = np.zeros((2, m))  # e_(t-1), e_(t-2) of the exploration noise
        # "mean" and "true" parameters never change: made once, not once per iteration (a device copy on the GPU)
        fixed = self.config.model != "biased"
        self.fixed_params = task.planner_params(self.config.model, (), None, xp=xp, dtype=dtype) if fixed else None
        self.mean = xp.zeros((self.config.H, m), dtype=dtype)  # warm start for `act`
        # About what one sample's arrays take in a plan (noise, actions, their copies, params, states, obs).
        per_sample = 4 * self.config.H * m + task.param_dim + 2 * task.state_dim + task.obs_dim + 16
        self.sample_bytes = per_sample * np.dtype(dtype).itemsize
        self.last_plan: Plan | None = None
        self._drawn: list = []  # noise drawn ahead for the next plan (draw_ahead), in the order it would be drawn

    def reseed(self, entropy) -> None:
        """The noise, the model draws and the exploration from the streams `entropy` names (a whole number or a
        tuple of them; None: fresh), as at construction: what a plan draws is then a function of entropy, not
        of the plans before it (a trainer's targets split over worker processes equal its own)."""
        noise_seed, param_seed, explore_seed = np.random.SeedSequence(entropy).spawn(3)
        self.noise_rng = self.backend.rng(noise_seed)
        self.param_rng = self.backend.rng(param_seed)
        self.explore_rng = np.random.default_rng(explore_seed)  # its own stream: exploring leaves the plans' noise
        self._drawn = []  # noise drawn ahead from the old streams

    def reset(self) -> None:
        """Forget the warm start and the exploration noise (a new episode)."""
        with self.backend.scope():
            self.mean[:] = 0.0
        self._explored[:] = 0.0

    def warm_up(self, states) -> None:
        """Plan twice from states (B, n), leaving the warm start as it is, so that no control step pays
        for a first plan: kernels compiled, ONNX Runtime set up, and on the GPU the plan captured as CUDA
        graphs (on a shape's second plan; on the CPU the second plan only costs its time). Acting plans
        with B = 1."""
        for _ in range(2):
            self.plan(states)

    def plan(self, states, mean=None) -> Plan:
        """Run n_iters MPPI iterations from each of states (B, n), starting from mean (B, H, m) or zeros."""
        with self.backend.scope():  # the GPU: the backend's stream, which ONNX Runtime shares
            return self._plan(states, mean)

    def _plan(self, states, mean) -> Plan:
        started = time.perf_counter()
        cfg, task, xp = self.config, self.task, self.xp
        states = xp.asarray(states, dtype=self.dtype)
        if states.ndim != 2 or states.shape[1] != task.state_dim:
            raise ValueError(f"states must be (B, {task.state_dim}) for {task.name}, got shape {states.shape}")
        B, H, m = states.shape[0], cfg.H, task.act_dim
        if mean is None:
            U = xp.zeros((B, H, m), dtype=self.dtype)
        else:
            U = xp.asarray(mean, dtype=self.dtype)  # read, never written: the iterations make new arrays
            if U.shape != (B, H, m):
                raise ValueError(f"mean must be (B, H, m) = {(B, H, m)}, got shape {U.shape}")
        # Refused before allocating: where the system overcommits memory, the allocation would succeed and
        # the process be killed mid-plan instead.
        if B * cfg.K * self.sample_bytes > self.backend.memory_bytes:
            raise MemoryError(f"B={B} x K={cfg.K} x H={H} samples do not fit in {self.backend.memory_bytes} bytes")
        # The backend runs the iterations (on the GPU: replays them as a CUDA graph) and brings the first
        # five results to the host in one copy. What the graph reads besides its inputs is named in `uses`.
        host, device = self.backend.run_as_graph(
            self._iterate, (states, U), host_outputs=5, uses=(self.noise_rng, self.param_rng, self.q)
        )
        actions, value, ess, min_cost, nonfinite = host
        return Plan(
            actions=actions,
            value=value,
            ess=ess,
            min_cost=min_cost,
            nonfinite=nonfinite,
            seconds=time.perf_counter() - started,
            weights=device[5],
            device_actions=device[0],
        )

    def _iterate(self, states, U):
        """n_iters MPPI iterations from states (B, n) and the mean U (B, H, m), on the backend's arrays: each
        samples K action sequences around U, scores them, and moves U towards the low-cost ones.

        Returns the new mean, the free energy, ESS, lowest cost, non-finite count and the last weights."""
        nonfinite = self.xp.zeros(states.shape[0], dtype=self.xp.int64)
        for _ in range(self.config.n_iters):
            actions, eps, params = self._sample(U)
            S, broken = self._score(states, U, actions, eps, params)
            nonfinite += broken
            value, weights, lowest = free_energy(S, self.config.temperature, self.xp)
            U = self._update(U, eps, weights)
        sum_w2 = (weights * weights).sum(axis=1)
        ess = self.xp.where(sum_w2 > 0, 1.0 / self.xp.where(sum_w2 > 0, sum_w2, 1.0), 0.0)
        U = self.xp.minimum(self.xp.maximum(U, self.u_min), self.u_max)
        return U, value, ess, lowest, nonfinite, weights

    def _sample(self, U):
        """K action sequences around each mean: U + eps with eps ~ N(0, Sigma) (smoothed by `noise_filter`),
        clipped to the bounds; eps becomes the clipped perturbation (the control cost's). Each rollout's model
        parameters: its own draw for "biased", else the fixed ones. -> actions, eps (B, K, H, m), params."""
        cfg, xp = self.config, self.xp
        B, H = U.shape[0], cfg.H
        eps = self._noise((B, cfg.K, H, self.task.act_dim))
        eps *= self.std
        if cfg.noise_filter != (1.0, 0.0, 0.0):
            b0, b1, b2 = cfg.noise_filter
            for t in range(2, H):
                eps[:, :, t] = b0 * eps[:, :, t] + b1 * eps[:, :, t - 1] + b2 * eps[:, :, t - 2]
        actions = U[:, None] + eps
        xp.maximum(actions, self.u_min, out=actions)  # in place: np.clip with these bounds is 4x slower
        xp.minimum(actions, self.u_max, out=actions)
        xp.subtract(actions, U[:, None], out=eps)
        params = self.fixed_params
        if params is None:  # "biased": each rollout draws its own
            params = self.task.planner_params(cfg.model, (B, cfg.K), self.param_rng, xp=xp, dtype=self.dtype)
        return actions, eps, params

    def _score(self, states, U, actions, eps, params):
        """Each sample's cost S (B, K), rolled out on the model from its start state:

            S = sum_{t<H-1} gamma^t c(s_t, a_t) + gamma^(H-1) Q(s_{H-1}, a_{H-1})
                + lambda sum_t 0.5 U_t^T Sigma^-1 (U_t + 2 eps_t)          (lambda: the temperature)

        (MPQ(lambda): the blend of returns in `blended_return`; the control cost undiscounted, docs/algorithm.md).
        A NaN or inf S (a broken model or Q) becomes inf, so it gets zero weight rather than poisoning the mean.
        -> S, and per state how many samples were not finite."""
        cfg, task, xp = self.config, self.task, self.xp
        (B, K, H, m) = actions.shape
        if self.q is not None and cfg.td_lambda < 1 and H > 1:
            returns = self.blended_return(states, actions, params)
        else:
            running, last_state = self.backend.rollout(states, actions, params, cfg.gamma)
            last_action = actions[:, :, H - 1]
            if self.q is None:
                terminal = task.cost(last_state, last_action)
            else:
                obs = task.obs(last_state).reshape(B * K, task.obs_dim)
                terminal = xp.asarray(self.q(obs, last_action.reshape(B * K, m)), dtype=self.dtype).reshape(B, K)
            returns = running + cfg.gamma ** (H - 1) * terminal
        task.forget_sensordata()  # what the backend handed over for this score: let it go
        scaled_U = (U * self.sigma_inv).reshape(B, H * m)
        quadratic = (U.reshape(B, H * m) * scaled_U).sum(axis=1, keepdims=True)  # (B, 1)
        cross = self._per_sample_dot(eps.reshape(B, K, H * m), scaled_U)  # (B, K)
        S = returns + (0.5 * cfg.temperature) * (quadratic + 2.0 * cross)
        finite = xp.isfinite(S)  # no branch on the data: on the GPU a branch would wait for the device
        return xp.where(finite, S, xp.inf), K - finite.sum(axis=1)

    def _update(self, U, eps, weights):
        """U + alpha sum_n w_n eps_n: the mean moves towards the perturbations of the low-cost samples."""
        B, K, H, m = eps.shape
        return U + self.config.alpha * self._weighted_sum(eps.reshape(B, K, H * m), weights).reshape(B, H, m)

    def draw_ahead(self) -> None:
        """Draw the next act's noise now: a loop calls this after sending an action, while the plant steps, so
        the step from the next state to its action does not wait for the normals (on the pendulum's K=1024,
        H=32 about a tenth of the plan). The same numbers in the same order as the plan would draw them: plans
        are unchanged to the bit. Host backends only (the GPU draws inside its graph)."""
        if self.xp is np and not self._drawn:
            self._rng_before_drawing = self.noise_rng.bit_generator.state
            shape = (1, self.config.K, self.config.H, self.task.act_dim)
            self._drawn = [self.noise_rng.standard_normal(shape, dtype=self.dtype) for _ in range(self.config.n_iters)]

    def _noise(self, shape):
        """Standard normals for one iteration: the ones drawn ahead where they fit; a plan of another shape puts
        the generator back to before they were drawn and draws now, so the order of the numbers never changes."""
        if self._drawn and self._drawn[0].shape == shape:
            return self._drawn.pop(0)
        if self._drawn:
            self.noise_rng.bit_generator.state = self._rng_before_drawing
            self._drawn = []
        return self.noise_rng.standard_normal(shape, dtype=self.dtype)

    # The two products over all samples: np.einsum on the host (one pass, no temporary, and no BLAS call: OpenBLAS
    # would hand a product this size to threads outside the loop's CPUs and priority); products and sums on the
    # GPU, because CuPy cannot put cuBLAS calls in a CUDA graph.
    def _per_sample_dot(self, a, b):
        """sum_j a[i, k, j] b[i, j] -> (B, K)."""
        if self.xp is np:
            return np.einsum("ikj,ij->ik", a, b)
        return (a * b[:, None, :]).sum(axis=2)

    def _weighted_sum(self, a, w):
        """sum_k w[i, k] a[i, k, j] -> (B, H m)."""
        if self.xp is np:
            return np.einsum("ikj,ik->ij", a, w)
        return (w[:, :, None] * a).sum(axis=1)

    def blended_return(self, states, actions, params):
        """MPQ(lambda) (Bhardwaj et al., ICLR 2021): per sample, with Q_t = Q(s_t, a_t) along the rollout,

            G = sum_{t<H-1} (gamma lambda)^t [c(s_t, a_t) + gamma (1 - lambda) Q_{t+1}] + (gamma lambda)^(H-1) Q_{H-1},

        the lambda-weighted mix of the k-step returns closed by Q (k = 1 .. H-1): lambda = 1 is MPQ's single
        return, lambda = 0 the one-step return. The rollout goes one control step at a time through the
        backend's own rollout (every backend, unchanged), and Q runs once on all H-1 visited states. H >= 2."""
        cfg, task, xp = self.config, self.task, self.xp
        B, K, H, m = actions.shape
        n, td, gamma = task.state_dim, cfg.td_lambda, cfg.gamma
        state = xp.broadcast_to(states[:, None, :], (B, K, n)).reshape(B * K, n)
        per_rollout = params if params.ndim == 1 else params.reshape(B * K, 1, task.param_dim)
        running = xp.zeros((B, K), dtype=self.dtype)
        observed = []
        for t in range(H - 1):  # each call: the cost at step t and the state after it
            cost, state = self.backend.rollout(
                state, actions[:, :, t : t + 2].reshape(B * K, 1, 2, m), per_rollout, gamma
            )
            observed.append(task.obs(state))  # before the next call: the state as returned (sensors handed over)
            state = state.reshape(B * K, n)
            running = running + (gamma * td) ** t * cost.reshape(B, K)
        obs = xp.stack(observed).reshape((H - 1) * B * K, task.obs_dim)  # s_1 .. s_{H-1}
        acts = xp.moveaxis(actions[:, :, 1:], 2, 0).reshape((H - 1) * B * K, m)  # a_1 .. a_{H-1}
        q = xp.asarray(self.q(obs, acts), dtype=self.dtype).reshape(H - 1, B, K)
        weights = [(gamma * td) ** t * gamma * (1 - td) for t in range(H - 1)]
        weights[-1] += (gamma * td) ** (H - 1)
        return running + sum(w * q[t] for t, w in enumerate(weights))

    def act(self, state: np.ndarray) -> np.ndarray:
        """Plan from one state with the warm start, return the first action, shift the mean."""
        return self.commit(self.propose(state))

    def propose(self, state: np.ndarray) -> Plan:
        """Plan from one state with the warm start, changing nothing yet (a realtime loop may drop it)."""
        plan = self.plan(self.xp.asarray(state, dtype=self.dtype)[None], self.mean[None])
        self.last_plan = plan
        return plan

    def commit(self, plan: Plan) -> np.ndarray:
        """Act on a proposed plan: its first action (plus the exploration noise, where the settings ask for it);
        its rest becomes the warm start."""
        self._shift(plan.device_actions[0])
        return self._explore(plan.actions[0, 0].copy())

    def _explore(self, action: np.ndarray) -> np.ndarray:
        """action + e_t, e_t = b0 n_t + b1 e_(t-1) + b2 e_(t-2), clipped to the bounds; the action itself when
        the settings explore = (0, 0, 0)."""
        b0, b1, b2 = self.config.explore
        if b0 == b1 == b2 == 0.0:
            return action
        e = b0 * self._explore_std * self.explore_rng.standard_normal(action.shape)
        e += b1 * self._explored[0] + b2 * self._explored[1]
        self._explored[1] = self._explored[0]
        self._explored[0] = e
        return np.clip(action + e, self.task.u_min, self.task.u_max)

    def skip(self) -> np.ndarray:
        """Act without a new plan (the last one came too late): the previous plan's next action."""
        with self.backend.scope():
            (action,) = self.backend.to_host(self.mean[0])
            action = np.array(action)
            self._shift(self.mean.copy())
        return action

    def _shift(self, sequence) -> None:
        """Warm-start the next plan with sequence[1:], zero-padded (on the backend's arrays and stream)."""
        with self.backend.scope():
            self.mean[:-1] = sequence[1:]
            self.mean[-1] = 0.0
