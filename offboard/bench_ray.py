"""The paths past one machine against their number of workers (`make bench`, section 6; `python -m offboard.bench_ray`).

On a Ray started here with one CPU per core: fleet collection (ball-in-cup episodes through 1 and 2 collectors, each
an onboard loop with its own stand-in) in episodes per minute, beside the same episodes in this process without Ray;
and the trainer's targets (minibatches of 64 next states through one-iteration MPPI) in minibatches per second on 1
and 2 Ray workers, beside this process's. From the speed-up at 2 workers, the fraction that stays serial (Amdahl:
f = 2 / S2 - 1) and, from it, a PROJECTION for 8 and 64 workers: S(n) = 1 / (f + (1 - f) / n). A projection, not a
measurement: it assumes as many free cores as workers and a driver that keeps up.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TASK = "ball_in_cup"
BATCH = 64


def speedup_model(one: float, two: float) -> dict:
    """The serial fraction from the rates at 1 and 2 workers, and the projected rates at 8 and 64."""
    serial = float(np.clip(2 * one / two - 1, 0.0, 1.0)) if two > 0 else 1.0
    projected = {n: one / (serial + (1 - serial) / n) for n in (8, 64)}
    return dict(serial_fraction=serial, projected=projected)


def run_fleet(task: str, episodes: int, root: Path, address: str) -> dict:
    from offboard.evaluate import run_episodes
    from offboard.fleet import Fleet

    started = time.perf_counter()
    run_episodes(root / "local", "robot", task, episodes, 0, "", {})
    rates = {"this process, no Ray": episodes / (time.perf_counter() - started) * 60}
    for size in (1, 2):
        fleet = Fleet(address, size)
        try:
            fleet.run_episodes(root / f"warm{size}", "robot", task, size, 0, "", {})  # collectors up, stand-ins warm
            started = time.perf_counter()
            fleet.run_episodes(root / f"fleet{size}", "robot", task, episodes, 0, "", {})
            rates[f"{size} collector{'s' if size > 1 else ''}"] = episodes / (time.perf_counter() - started) * 60
        finally:
            fleet.close()
    return dict(
        task=task,
        episodes=episodes,
        episodes_per_minute=rates,
        **speedup_model(rates["1 collector"], rates["2 collectors"]),
    )


def run_targets(task_name: str, minibatches: int, root: Path, address: str) -> dict:
    from offboard.evaluate import run_episodes
    from offboard.mpq import Config, LocalTargets, QNetwork, TorchQ, target_planner
    from offboard.target_workers import RayTargets
    from onboard.mppi import MPPIConfig
    from onboard.recorder import read_segment, verified_segments
    from onboard.tasks import get_task

    task = get_task(task_name)
    run_episodes(root / "data", "robot", task_name, 1, 1, "", {})
    (segment,), _ = verified_segments(root / "data" / "robot")
    states = np.array([t["next_state"] for t in read_segment(segment)[1]["/transition"]])
    net = QNetwork(task.obs_dim, task.act_dim, (100, 100), task.value_scale)
    config = Config(task=task_name, target_iters=1, torch_threads=1, target_threads=1, ray=address)
    gamma = MPPIConfig.for_task(task).gamma

    def rate(targets) -> float:
        targets.sync()
        targets.values(states[:BATCH], (0, 0, 0))  # warm: workers up, models built
        started = time.perf_counter()
        for u in range(minibatches):
            batch = states[(u * BATCH) % (len(states) - BATCH) :][:BATCH]
            targets.values(batch, (0, 0, u + 1))
        return minibatches / (time.perf_counter() - started)

    rates = {"this process, no Ray": rate(LocalTargets(target_planner(config, task, TorchQ(net), 1.0)))}
    for workers in (1, 2):
        remote = RayTargets(Config(**{**config.to_dict(), "target_workers": workers}), net, 1.0, gamma)
        try:
            rates[f"{workers} worker{'s' if workers > 1 else ''}"] = rate(remote)
        finally:
            remote.close()
    return dict(
        task=task_name,
        batch=BATCH,
        minibatches=minibatches,
        per_second=rates,
        **speedup_model(rates["1 worker"], rates["2 workers"]),
    )


def run(quick: bool) -> dict:
    from offboard.target_workers import require_ray

    # the bench's own cluster, with its own token (Ray reads these when imported; a user's settings stand)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray = require_ray()
    torch.set_num_threads(1)
    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    address = ray.get_runtime_context().gcs_address  # the fleet and the target workers find this cluster by it
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            task = "pendulum" if quick else TASK  # quick: a smoke run, on the task whose episodes take a second
            return dict(
                cpus=os.cpu_count(),
                fleet=run_fleet(task, 2 if quick else 8, root, address),
                targets=run_targets(task, 3 if quick else 20, root, address),
            )
    finally:
        ray.shutdown()


def print_table(report: dict, console) -> None:
    from rich.table import Table

    for key, unit, what in (
        ("fleet", "episodes_per_minute", f"Fleet collection, {report['fleet']['task']} (episodes per minute)"),
        (
            "targets",
            "per_second",
            f"Training targets, {report['targets']['task']}, batch {BATCH} (minibatches per second)",
        ),
    ):
        part = report[key]
        table = Table(title=f"{what} on {report['cpus']} CPUs; 8 and 64: PROJECTED from the serial fraction")
        for col in ("workers", "rate", "serial fraction"):
            table.add_column(col)
        for label, value in part[unit].items():
            table.add_row(label, f"{value:.2f}", "")
        for n, value in part["projected"].items():
            table.add_row(f"{n} (projection)", f"{value:.1f}", f"{part['serial_fraction']:.2f}")
        console.print(table)


def main(argv=None) -> int:
    from rich.console import Console

    from firmware_bridge.cli import ArgumentParser
    from offboard.bench import publish  # offboard.bench imports this module: here, not at the top

    parser = ArgumentParser(prog="python -m offboard.bench_ray", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the pendulum, a few episodes (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON report")
    args = parser.parse_args(argv)
    publish(run(args.quick), args.out, "ray", lambda r: print_table(r, Console(width=120)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
