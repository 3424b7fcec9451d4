"""Pendulum swing-up with the classic Gym constants (the paper's): a uniform rod on a torque-limited hinge.

models/pendulum/pendulum.xml is the plant. State [time, theta, thetadot] (MuJoCo's full physics state)
with theta = 0 upright. Its closed form, the optional fast path: thetadotdot = 3g/(2l) sin(theta) +
3u/(m l^2), stepped as Gym does: thetadot' = clip(thetadot + dt * thetadotdot, +-8), theta' = theta +
dt * thetadot' (semi-implicit Euler with a speed limit, as MuJoCo steps the MJCF with its qvel_max).
Cost theta^2 + 0.1 thetadot^2; obs [cos, sin, thetadot].

The planner's bias (the paper's): mass m ~ U[0.9, 1.5] and length l ~ U[0.9, 1.5], as the rod's mass
and its centre of mass l/2 from the pivot; the rod's inertia follows both.
"""

from __future__ import annotations

import numpy as np

from onboard.tasks.base import Parameter, Task, set_uniform_rod_inertia, wrap_angle

# The analytic model's constants; tests/onboard/test_tasks.py holds them to the MJCF.
G = 10.0
DT = 0.05
V_MAX = 8.0
W_THETADOT = 0.1


class Pendulum(Task):
    name = "pendulum"
    obs_dim = 3
    parameters = (Parameter("body_mass[pole]", 0.9, 1.5), Parameter("body_ipos[pole][2]", 0.45, 0.75))
    # The paper's Table 3, plus 3 MPPI iterations per control step: the iterations each soft-Bellman
    # target runs, so the robot acts with the optimiser whose value Q learns (README, "Acting iterations").
    mppi_defaults = dict(K=24, H=8, sigma=4.0, temperature=0.15, alpha=0.5, gamma=0.9, n_iters=3)
    long_horizon = 32

    c_source = f"""
MPQ_FN void pendulum_step(const REAL *s, const REAL *u, const REAL *p, REAL *out) {{
    REAL m = p[0], l = 2 * p[1];
    REAL acc = (REAL)(3.0 * {G!r} / 2.0) / l * sin(s[1]) + 3 * u[0] / (m * l * l);
    REAL v = mpq_clip(s[2] + (REAL){DT!r} * acc, -(REAL){V_MAX!r}, (REAL){V_MAX!r});
    out[0] = s[0] + (REAL){DT!r};
    out[1] = s[1] + (REAL){DT!r} * v;
    out[2] = v;
}}
MPQ_FN REAL pendulum_cost(const REAL *s, const REAL *u) {{
    REAL th = mpq_wrap_angle(s[1]);
    return th * th + (REAL){W_THETADOT!r} * s[2] * s[2];
}}
"""

    derived_fields = ("body_inertia",)  # a uniform rod's, from its mass and length

    def derive(self, fields, params):
        set_uniform_rod_inertia(fields, self.mjcf.model.body("pole").id, params[:, 0], params[:, 1])

    def step(self, s, u, p):
        time, theta, thetadot = s[..., 0], s[..., 1], s[..., 2]
        m, l = p[..., 0], 2 * p[..., 1]
        acc = (3.0 * G / 2.0) / l * np.sin(theta) + 3 * u[..., 0] / (m * l * l)
        v = np.clip(thetadot + DT * acc, -V_MAX, V_MAX)
        return np.stack(np.broadcast_arrays(time + DT, theta + DT * v, v), axis=-1)

    def cost(self, s, u):
        theta = wrap_angle(s[..., 1])
        return theta * theta + W_THETADOT * s[..., 2] * s[..., 2]

    def obs(self, s):
        theta = s[..., 1]  # no preallocated NumPy output: on the GPU, s is a CuPy array and so is obs
        return np.stack([np.cos(theta), np.sin(theta), s[..., 2]], axis=-1)

    def success(self, s):
        return np.abs(wrap_angle(s[..., 1])) < 0.1
