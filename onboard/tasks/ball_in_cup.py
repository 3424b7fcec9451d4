"""BallInCupSparse (the MPQ paper's manipulation task): swing a ball on a string into a cup.

models/ball_in_cup/ball_in_cup.xml is the plant (the DeepMind Control Suite's ball-in-cup with the paper's
TRUE ball and string). MJCF only: no closed-form model, so it plans with the `mujoco` (CPU) and `warp`
(GPU) backends. State [time, cup_x, cup_z, ball_x, ball_z, their four velocities] (MuJoCo's full physics
state; the slides' displacements from the bodies' MJCF positions).

Cost: 0 while the ball is in the cup, else 1 (sparse). "In the cup" is the suite's test: the ball's
centre within the MJCF's `target` box (x and z) shrunk by the ball's radius. Success: the ball in the cup
at the last state of the episode (the suite scores the same test each step).

Observation (12, the paper's size): the cup's position (2); the ball relative to the target's centre (2);
the cup's and the ball's velocities (4); the margins of the in-cup test, (half size - radius) - |offset|
per axis (2: both positive exactly when the cost is 0, so the Q need not learn the box's corners from
positions alone); the string's slack, 0.3 m minus the ball-to-cup distance (1: whether the ball swings
on a taut string or flies free); and the in-cup flag itself (1). The positions and velocities are the
Markov state; the last four are functions of it that put the sparse cost's edges on axes a small MLP
finds quickly.

The planner's bias (the paper's Table 1): ball mass ~ U[0.0087, 0.87] (TRUE 0.058), ball inertia ~
U[0.22, 22]e-5 (TRUE 1.47e-5), string stiffness ~ U[0.00375, 1.5] (TRUE 0.05), one draw per rollout.
The ball moves on two slides and never turns, so its inertia has no effect on the motion: it is kept
because the paper biases it, and a planner that writes it must still agree with the plant.

Starts: the suite's: the ball at a random position (x in [-0.2, 0.2], z in [0.2, 0.5] from the MJCF's
start box), drawn again while it would touch the cup, everything at rest.
"""

from __future__ import annotations

import numpy as np

from onboard.tasks.base import Parameter, Task


class BallInCup(Task):
    name = "ball_in_cup"
    obs_dim = 12
    parameters = (
        Parameter("body_mass[ball]", 0.0087, 0.87),
        Parameter("body_inertia[ball]", 0.22e-5, 22e-5),
        Parameter("tendon_stiffness[string]", 0.00375, 1.5),
    )
    # The paper's Table 3, with the 3 MPPI iterations per plan that the soft-Bellman targets run, except the
    # discount: 0.98, not 0.9. A swing-up from below the cup takes at least 38 control steps (0.76 s at 20 ms);
    # 0.9 per step discounts a catch that far ahead to 0.9^38 = 2 % of a step's cost, under the Q's fit error,
    # so the Q never learns to swing (README, "Ball-in-cup"). Every planner and learner of the task uses it.
    mppi_defaults = dict(K=36, H=4, sigma=4.0, temperature=0.15, alpha=0.55, gamma=0.98, n_iters=3)
    long_horizon = 48

    def __init__(self, mass_scale: dict[str, float] | None = None):
        super().__init__(mass_scale)
        model = self.mjcf.model
        cup, ball, target = model.body("cup").id, model.body("ball").id, model.site("target").id
        # world positions (x, z) at zero slide displacement: the target's centre, the cup's string site, the ball
        self.target_home = (model.body_pos[cup] + model.site_pos[target])[[0, 2]]
        self.string_home = (model.body_pos[cup] + model.site_pos[model.site("cup").id])[[0, 2]]
        self.ball_home = model.body_pos[ball][[0, 2]]
        self.in_cup_tolerance = model.site_size[target][[0, 2]] - model.geom_size[model.geom("ball").id][0]
        string = model.tendon("string").id
        self.string_length = float(model.tendon_range[string][1])

    # --- geometry (vectorised over leading axes, NumPy or CuPy) -----------------------------------
    def _offsets(self, s):
        """The ball's centre relative to the target's and to the string's cup end: ((dx, dz), (sx, sz))."""
        q = s[..., self.qpos]
        ball_x, ball_z = q[..., 2] + self.ball_home[0], q[..., 3] + self.ball_home[1]
        dx, dz = ball_x - (q[..., 0] + self.target_home[0]), ball_z - (q[..., 1] + self.target_home[1])
        sx, sz = ball_x - (q[..., 0] + self.string_home[0]), ball_z - (q[..., 1] + self.string_home[1])
        return (dx, dz), (sx, sz)

    def _margins(self, s):
        (dx, dz), _ = self._offsets(s)
        return self.in_cup_tolerance[0] - np.abs(dx), self.in_cup_tolerance[1] - np.abs(dz)

    def in_cup(self, s):
        mx, mz = self._margins(s)
        return (mx > 0) & (mz > 0)

    def cost(self, s, u):
        return 1.0 - self.in_cup(s).astype(s.dtype)

    def obs(self, s):
        q, v = s[..., self.qpos], s[..., self.qvel]
        (dx, dz), (sx, sz) = self._offsets(s)
        mx, mz = self._margins(s)
        slack = self.string_length - np.sqrt(sx * sx + sz * sz)
        inside = ((mx > 0) & (mz > 0)).astype(s.dtype)
        return np.stack(
            [q[..., 0], q[..., 1], dx, dz, v[..., 0], v[..., 1], v[..., 2], v[..., 3], mx, mz, slack, inside], axis=-1
        )

    def success(self, s):
        return self.in_cup(s)

    # --- starts -----------------------------------------------------------------------------------
    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """The suite's start: a random ball position from the MJCF's box, drawn again while it touches the cup."""
        for _ in range(1000):
            state = super().initial_state(rng)
            if self.mjcf.contacts(state[self.qpos]) == 0:
                return state
        raise RuntimeError(f"{self.xml_path}: no start without contact in 1000 draws from the start box")
