"""Cart-pole swing-up: a force on the cart, a uniform pole hinged on it, theta = 0 upright.

models/cartpole/cartpole.xml is the plant. Classic constants (Barto et al. / Gym CartPole): cart 1 kg,
pole 0.1 kg and 1 m long (0.5 m to its centre), g = 9.8, |force| <= 10 N, rails at |x| <= 2.4 m; plus
a little viscous rail friction on the cart. State [time, x, theta, xdot, thetadot] (MuJoCo's full
physics state). The optional fast path: the exact rigid-body equations, integrated with semi-implicit
Euler at 10 ms, five substeps per 50 ms control period, exactly as MuJoCo steps the MJCF: between the
rails the two agree to rounding. At a rail the analytic model stops the cart with an inelastic impulse
that also acts on the pole; MuJoCo's joint limit is a stiff soft constraint that spreads the same stop
over a few milliseconds, so there the two agree to a few centimetres and hundredths of a radian
(tests/onboard/test_tasks.py states the tolerance). Cost on the pole's height, the cart's distance from
the centre and a little on spin.

Observation (5): [x, cos theta, sin theta, xdot, thetadot].

The planner's bias: the pole's mass, its length (as its centre of mass, half the length; the pole's
inertia follows both) and the cart's rail friction.
"""

from __future__ import annotations

import numpy as np

from onboard.tasks.base import Parameter, Task, set_uniform_rod_inertia, wrap_angle

# The analytic model's constants; tests/onboard/test_tasks.py holds them to the MJCF.
G = 9.8
CART_MASS = 1.0
PHYSICS_DT = 0.01
SUBSTEPS = 5
X_MAX = 2.4
W_HEIGHT, W_X, W_THETADOT = 5.0, 0.5, 0.01


class CartPole(Task):
    name = "cartpole"
    obs_dim = 5
    parameters = (
        Parameter("body_mass[pole]", 0.08, 0.2),
        Parameter("body_ipos[pole][2]", 0.45, 0.75),
        Parameter("dof_damping[slider]", 0.0, 0.5),
    )
    # Not in the paper (it has no cart-pole). Like the pendulum's H=8, H=12 is too short to swing up
    # without a terminal value, even with the true model; the long baseline, H=24, does it. 3 MPPI
    # iterations per plan, as the pendulum: the iterations of the paper's soft-Bellman targets.
    mppi_defaults = dict(K=128, H=12, sigma=25.0, temperature=0.5, alpha=0.5, gamma=0.98, n_iters=3)
    long_horizon = 24
    # Costs up to 10 a step (hanging) with gamma = 0.98: values of a few hundred.
    value_scale = 100.0

    c_source = f"""
MPQ_FN void cartpole_step(const REAL *s, const REAL *u, const REAL *p, REAL *out) {{
    REAL mp = p[0], lc = p[1], b = p[2];
    REAL m11 = (REAL){CART_MASS!r} + mp, m22 = 4 * mp * lc * lc / 3;
    REAL x = s[1], th = s[2], xd = s[3], thd = s[4];
    for (int i = 0; i < {SUBSTEPS}; ++i) {{
        REAL sn = sin(th), cs = cos(th);
        REAL m12 = mp * lc * cs;
        REAL f1 = u[0] - b * xd + mp * lc * sn * thd * thd;
        REAL f2 = mp * (REAL){G!r} * lc * sn;
        REAL det = m11 * m22 - m12 * m12;
        xd += (REAL){PHYSICS_DT!r} * (m22 * f1 - m12 * f2) / det;
        thd += (REAL){PHYSICS_DT!r} * (m11 * f2 - m12 * f1) / det;
        REAL x_next = x + (REAL){PHYSICS_DT!r} * xd;
        if (x_next > (REAL){X_MAX!r} || x_next < -(REAL){X_MAX!r}) {{
            /* inelastic stop at the rail: the impulse that sets the cart's speed acts on the pole too */
            REAL xd_stop = (mpq_clip(x_next, -(REAL){X_MAX!r}, (REAL){X_MAX!r}) - x) / (REAL){PHYSICS_DT!r};
            thd -= m12 * (xd_stop - xd) / m22;
            xd = xd_stop;
        }}
        x += (REAL){PHYSICS_DT!r} * xd;
        th += (REAL){PHYSICS_DT!r} * thd;
    }}
    out[0] = s[0] + (REAL){PHYSICS_DT * SUBSTEPS!r};
    out[1] = x; out[2] = th; out[3] = xd; out[4] = thd;
}}
MPQ_FN REAL cartpole_cost(const REAL *s, const REAL *u) {{
    return (REAL){W_HEIGHT!r} * (1 - cos(s[2])) + (REAL){W_X!r} * s[1] * s[1]
         + (REAL){W_THETADOT!r} * s[4] * s[4];
}}
"""

    derived_fields = ("body_inertia",)  # a uniform rod's, from its mass and length

    def derive(self, fields, params):
        set_uniform_rod_inertia(fields, self.mjcf.model.body("pole").id, params[:, 0], params[:, 1])

    def step(self, s, u, p):
        mp, lc, b = p[..., 0], p[..., 1], p[..., 2]
        m11, m22 = CART_MASS + mp, 4 * mp * lc * lc / 3
        time, x, th, xd, thd = s[..., 0], s[..., 1], s[..., 2], s[..., 3], s[..., 4]
        force = u[..., 0]
        for _ in range(SUBSTEPS):
            sn, cs = np.sin(th), np.cos(th)
            m12 = mp * lc * cs
            f1 = force - b * xd + mp * lc * sn * thd * thd
            f2 = mp * G * lc * sn
            det = m11 * m22 - m12 * m12
            xd = xd + PHYSICS_DT * (m22 * f1 - m12 * f2) / det
            thd = thd + PHYSICS_DT * (m11 * f2 - m12 * f1) / det
            x_next = x + PHYSICS_DT * xd
            # inelastic stop at the rail: the impulse that sets the cart's speed acts on the pole too
            xd_stop = np.where(np.abs(x_next) > X_MAX, (np.clip(x_next, -X_MAX, X_MAX) - x) / PHYSICS_DT, xd)
            thd = thd - m12 * (xd_stop - xd) / m22
            xd = xd_stop
            x = x + PHYSICS_DT * xd
            th = th + PHYSICS_DT * thd
        return np.stack(np.broadcast_arrays(time + PHYSICS_DT * SUBSTEPS, x, th, xd, thd), axis=-1)

    def cost(self, s, u):
        return W_HEIGHT * (1 - np.cos(s[..., 2])) + W_X * s[..., 1] ** 2 + W_THETADOT * s[..., 4] ** 2

    def obs(self, s):
        th = s[..., 2]
        return np.stack([s[..., 1], np.cos(th), np.sin(th), s[..., 3], s[..., 4]], axis=-1)

    def success(self, s):
        return (np.abs(wrap_angle(s[..., 2])) < 0.2) & (np.abs(s[..., 1]) < X_MAX)
