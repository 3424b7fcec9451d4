"""What a task is: dimensions, bounds, cost, and its analytic dynamics in NumPy and in C.

A state is MuJoCo's qpos followed by qvel, in SI units, so a state means the same thing on the wire,
in the logs and in the planner. Angles are kept unwrapped in the state (as MuJoCo does); cost and
success wrap them to [-pi, pi).

The dynamics exist twice, from one set of Python constants: `step` in NumPy (the float64 reference,
vectorised over any leading axes) and `c_source`, per-sample C functions `<name>_step` and
`<name>_cost` that the fast CPU backend compiles and the GPU backend reuses. Both integrate
exactly as the MuJoCo plant does, semi-implicit Euler at the XML's timestep, so "true model" means
the same thing here and in the stand-in; tests/onboard/test_tasks.py holds them to it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

TWO_PI = 2.0 * math.pi


@functools.cache
def constant(xp, values: tuple[float, ...], dtype):
    """values as an array of xp, made once: a CUDA graph capture may not copy from the host."""
    return xp.asarray(values, dtype=dtype)


def wrap_angle(theta):
    """Wrap to [-pi, pi)."""
    return (theta + math.pi) % TWO_PI - math.pi


# C helpers every task's C source may use; REAL is double on the CPU and float on the GPU (NVRTC has
# its math functions built in, without headers).
C_PRELUDE = r"""
#ifndef __CUDACC_RTC__
#include <math.h>
#endif
#ifndef REAL
#define REAL double
#endif
#ifndef MPQ_FN
#define MPQ_FN static inline
#endif
#define MPQ_PI ((REAL)3.14159265358979323846)
MPQ_FN REAL mpq_wrap_angle(REAL a) {
    REAL two_pi = 2 * MPQ_PI;
    return a - two_pi * floor((a + MPQ_PI) / two_pi);
}
MPQ_FN REAL mpq_clip(REAL x, REAL lo, REAL hi) { return x < lo ? lo : (x > hi ? hi : x); }
"""


class Task:
    """A control task: data plus a small cost and its dynamics. Subclasses fill in every field."""

    name: str
    state_dim: int
    obs_dim: int
    act_dim: int
    dt: float  # control period, s
    u_min: np.ndarray
    u_max: np.ndarray
    episode_steps: int
    param_names: tuple[str, ...]
    true_params: np.ndarray  # the plant's parameters (the same as in models/<name>/<name>.xml)
    bias_low: np.ndarray  # the planner's biased distribution: U[bias_low, bias_high] per parameter
    bias_high: np.ndarray
    # The paper's MPPI settings for this task (MPQ.md, Table 3): K, H, sigma, lam, alpha, gamma.
    mppi_defaults: dict
    long_horizon: int  # the "long MPPI" baseline horizon
    c_source: str  # defines `MPQ_FN void <name>_step(s, u, p, out)` and `MPQ_FN REAL <name>_cost(s, u)`

    @property
    def param_dim(self) -> int:
        return len(self.param_names)

    def planner_params(self, model: str, shape: tuple[int, ...], rng, xp=np, dtype=np.float64):
        """Parameters for the planner's rollouts: (*shape, param_dim), or (param_dim,) shared by all.

        model: "biased" draws each rollout's parameters from U[bias_low, bias_high];
        "mean" fixes them at the middle of that range; "true" uses the plant's parameters
        (the upper-bound baseline, only when a run asks for it). `xp`, `rng` and `dtype` are the
        backend's array module, generator and float type (NumPy's, or CuPy's on the GPU).
        """
        if model == "biased":
            low, high = constant(xp, tuple(self.bias_low), dtype), constant(xp, tuple(self.bias_high), dtype)
            return low + (high - low) * rng.random((*shape, self.param_dim), dtype=dtype)
        if model == "mean":
            fixed = 0.5 * (self.bias_low + self.bias_high)
        elif model == "true":
            fixed = self.true_params
        else:
            raise ValueError(f"unknown planner model {model!r}: use 'biased', 'mean' or 'true'")
        return xp.asarray(fixed, dtype=dtype)

    # --- to be provided by each task -------------------------------------------------------
    def step(self, s: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Next state after one control period; u must already be within [u_min, u_max]."""
        raise NotImplementedError

    def cost(self, s: np.ndarray, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def obs(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def success(self, s: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def initial_state(self, rng: np.random.Generator) -> np.ndarray:
        """A random start from the task's start distribution."""
        raise NotImplementedError

    def hanging_state(self) -> np.ndarray:
        """The hardest fixed start: at rest, hanging down."""
        raise NotImplementedError
