"""Pendulum swing-up with the classic Gym constants (MPQ.md): a uniform rod on a torque-limited hinge.

State [theta, thetadot] with theta = 0 upright; thetadotdot = 3g/(2l) sin(theta) + 3u/(m l^2).
Exactly Gym's step: thetadot' = clip(thetadot + dt * thetadotdot, +-8), theta' = theta + dt * thetadot'
(semi-implicit Euler with a speed limit, as the MuJoCo plant steps it). Cost theta^2 + 0.1 thetadot^2;
obs [cos, sin, thetadot].
"""

from __future__ import annotations

import numpy as np

from onboard.tasks.base import Task, wrap_angle

G = 10.0
DT = 0.05
U_MAX = 2.0
V_MAX = 8.0
W_THETADOT = 0.1


class Pendulum(Task):
    name = "pendulum"
    state_dim = 2
    obs_dim = 3
    act_dim = 1
    dt = DT
    u_min = np.array([-U_MAX])
    u_max = np.array([U_MAX])
    episode_steps = 200  # 10 s
    param_names = ("mass", "length")
    true_params = np.array([1.0, 1.0])
    bias_low = np.array([0.9, 0.9])
    bias_high = np.array([1.5, 1.5])
    # Table 3, plus 3 MPPI iterations per control step: the iterations each soft-Bellman target runs
    # (MPQ.md, Eq. 19), so the robot acts with the optimiser whose value Q learns. With one iteration,
    # K=24 rollouts that each draw their own biased (m, l) are weighted mostly by their parameter draw,
    # and the swing-up misses the catch on some starts (README, "Acting iterations").
    mppi_defaults = dict(K=24, H=8, sigma=4.0, lam=0.15, alpha=0.5, gamma=0.9, n_iters=3)
    long_horizon = 32

    c_source = f"""
MPQ_FN void pendulum_step(const REAL *s, const REAL *u, const REAL *p, REAL *out) {{
    REAL m = p[0], l = p[1];
    REAL acc = (REAL)(3.0 * {G!r} / 2.0) / l * sin(s[0]) + 3 * u[0] / (m * l * l);
    REAL v = mpq_clip(s[1] + (REAL){DT!r} * acc, -(REAL){V_MAX!r}, (REAL){V_MAX!r});
    out[0] = s[0] + (REAL){DT!r} * v;
    out[1] = v;
}}
MPQ_FN REAL pendulum_cost(const REAL *s, const REAL *u) {{
    REAL th = mpq_wrap_angle(s[0]);
    return th * th + (REAL){W_THETADOT!r} * s[1] * s[1];
}}
"""

    def step(self, s, u, p):
        theta, thetadot = s[..., 0], s[..., 1]
        m, l = p[..., 0], p[..., 1]
        acc = (3.0 * G / 2.0) / l * np.sin(theta) + 3 * u[..., 0] / (m * l * l)
        v = np.clip(thetadot + DT * acc, -V_MAX, V_MAX)
        return np.stack([theta + DT * v, v], axis=-1)

    def cost(self, s, u):
        theta = wrap_angle(s[..., 0])
        return theta * theta + W_THETADOT * s[..., 1] * s[..., 1]

    def obs(self, s):
        theta = s[..., 0]  # no preallocated NumPy output: on the GPU, s is a CuPy array and so is obs
        return np.stack([np.cos(theta), np.sin(theta), s[..., 1]], axis=-1)

    def success(self, s):
        return np.abs(wrap_angle(s[..., 0])) < 0.1

    def initial_state(self, rng):
        return np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-1.0, 1.0)])

    def hanging_state(self):
        return np.array([np.pi, 0.0])
