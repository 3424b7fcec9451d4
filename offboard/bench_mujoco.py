"""`make bench`'s MuJoCo rows: MuJoCo steps per second of the mujoco backend's plan, against the limit and
against what a user would write first, rounds interleaved in one run.

For each task and case (K=36 H=4 with 3 iterations: the paper's ball-in-cup acting setting; K=1024 H=32):
  mpq mujoco     MPPI.plan with the mujoco backend, biased model (one MjModel per rollout): noise, model
                 writes, rollouts, vectorised cost and the update;
  raw rollout    mujoco.rollout alone on the same rollouts (same models, threads, steps): the limit
                 (target: mpq within 1.2x of it);
  python mj_step a plain Python loop over mj_setState and mj_step for the same rollouts, one thread
                 (target: mpq at least 20x faster).
The pendulum's speed limit (qvel_max) is applied between physics steps, so its mpq row calls
mujoco.rollout once per physics step; the raw row is one call (the limit without the governor).
"""

from __future__ import annotations

import time

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from onboard.mppi import MPPI, MPPIConfig
from onboard.tasks import get_task

CASES = [dict(name="K=36 H=4 3 iters", K=36, H=4, n_iters=3), dict(name="K=1024 H=32", K=1024, H=32, n_iters=1)]
TASKS = ("pendulum", "cartpole")


def python_loop(models, start, controls) -> None:
    """What a user writes first: one MjData, mj_setState and mj_step per rollout and step."""
    data = mujoco.MjData(models[0])
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    for model, state, sequence in zip(models, start, controls, strict=True):
        mujoco.mj_setState(model, data, state, spec)
        for u in sequence:
            data.ctrl[:] = u
            mujoco.mj_step(model, data)


def bench_case(task_name: str, case: dict, threads: int, rounds: int) -> dict:
    task = get_task(task_name)
    K, H, n_iters = case["K"], case["H"], case["n_iters"]
    mppi = MPPI(task, MPPIConfig.for_task(task, K=K, H=H, n_iters=n_iters, model="biased"), "mujoco", threads=threads)
    state = task.hanging_state()[None]
    mppi.warm_up(state)
    backend = mppi.backend
    models = backend.planner_models(task.planner_params("biased", (K,), np.random.default_rng(0)), K)
    steps = (H - 1) * backend.substeps  # physics steps per rollout
    start = np.repeat(state, K, axis=0)
    rng = np.random.default_rng(1)
    controls = rng.uniform(task.u_min, task.u_max, (K, steps, task.act_dim))
    warmstart = np.zeros((K, task.mjcf.model.nv))
    pool = mj_rollout.Rollout(nthread=0 if threads == 1 else threads)
    data = [mujoco.MjData(models[0]) for _ in range(threads)]

    def raw():
        for _ in range(n_iters):
            pool.rollout(models, data, start, controls, initial_warmstart=warmstart)

    def loop():
        for _ in range(n_iters):
            python_loop(models, start, controls)

    runs = {"mpq mujoco": lambda: mppi.plan(state), "raw rollout": raw, "python mj_step": loop}
    seconds = {name: [] for name in runs}
    for r in range(rounds):  # A/B/C, A/B/C: one machine state for all three
        for name, call in runs.items():
            if name == "python mj_step" and r >= max(3, rounds // 10):
                continue  # slow and steady: a few rounds say enough
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    pool.close()
    work = K * steps * n_iters
    rows = []
    for name, times in seconds.items():
        median = float(np.median(times))
        rows.append(
            dict(
                task=task_name,
                case=case["name"],
                planner=name,
                median_ms=median * 1e3,
                p99_ms=float(np.percentile(times, 99)) * 1e3,
                steps_per_second=work / median,
                rounds=len(times),
            )
        )
    return rows


def run(threads: int, quick: bool) -> dict:
    rows, targets = [], []
    for task_name in TASKS:
        for case in CASES:
            case_rows = {r["planner"]: r for r in bench_case(task_name, case, threads, 5 if quick else 50)}
            rows += case_rows.values()
            mpq, raw, loop = (case_rows[k]["median_ms"] for k in ("mpq mujoco", "raw rollout", "python mj_step"))
            label = f"{task_name} {case['name']}"
            targets += [
                dict(
                    target=f"{label}: mpq mujoco within 1.2x of raw mujoco.rollout",
                    measured=f"{mpq / raw:.2f}x",
                    met=mpq <= 1.2 * raw,
                ),
                dict(
                    target=f"{label}: mpq mujoco >= 20x a Python mj_step loop",
                    measured=f"{loop / mpq:.1f}x",
                    met=loop >= 20 * mpq,
                ),
            ]
    return dict(threads=threads, rows=rows, targets=targets)


def print_table(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"MuJoCo planner: MPPI plans stepping the MJCF, biased model ({report['threads']} threads)")
    for col in ("task", "case", "planner", "median ms", "p99 ms", "MuJoCo steps/s", "rounds"):
        table.add_column(col)
    for r in report["rows"]:
        table.add_row(
            r["task"],
            r["case"],
            r["planner"],
            f"{r['median_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['steps_per_second']:,.0f}",
            str(r["rounds"]),
        )
    console.print(table)
    for t in report["targets"]:
        console.print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
