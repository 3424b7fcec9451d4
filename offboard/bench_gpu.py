"""`make bench-gpu`: milliseconds per MPPI control step on the GPU, against pytorch-mppi on CUDA.

Pendulum and cart-pole, K in {1024, 4096, 16384}, H = 32, one MPPI iteration per step, a 2x256 tanh
MLP as the ONNX terminal Q, closed loop on the planner's model from the hanging start. `mpq cupy` is a
whole control step as the robot runs it (state to the device, plan, the action back to the host);
pytorch-mppi on CUDA gets the same dynamics, cost, K, H, sigma, lambda and MLP, in the same run, in float32
and float64; the target compares with the faster (the peer at its best).
Targets on an H100: K=4096 H=32 under 0.5 ms median, and >= 5x faster than pytorch-mppi on CUDA.
`mpq warp` plans by stepping the task's MJCF with MuJoCo Warp (no closed-form model) at K=4096, in the
same run as the cupy kernel; and one training minibatch of soft-Bellman targets (64 start states x
K=36, H=4, 3 iterations: the ball-in-cup's acting planner) on both. Prints JSON and a table and writes
`runs/bench/gpu-<time>.json`.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from firmware_bridge.cli import ArgumentParser
from offboard.bench import publish
from offboard.bench_step import time_calls, time_mpq, time_pytorch_mppi
from offboard.onnx_mlp import save_random_q
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.tasks import get_task

TASK_NAMES = ("pendulum", "cartpole")
SAMPLES = (1024, 4096, 16384)
TARGET_K = 4096
H = 32
HIDDEN = (256, 256)


def time_q(task, q, K: int, steps: int) -> dict:
    """The device Q on K samples as a replayed step runs it (ONNX Runtime on one IO binding), waited for."""
    import cupy

    from onboard.backends.cupy_backend import CupyBackend

    backend = CupyBackend(task)
    device_q = backend.device_q(q)
    rng = np.random.default_rng(0)
    with backend.scope():
        obs = cupy.asarray(rng.standard_normal((K, task.obs_dim)), dtype=cupy.float32)
        act = cupy.asarray(rng.standard_normal((K, task.act_dim)), dtype=cupy.float32)
        if device_q.session is None:  # the announced CPU fallback, as it runs
            run = functools.partial(device_q, obs, act)
        else:
            run = device_q.bound_run(obs, act, device_q.output(K))
        return time_calls(lambda: (run(), backend.stream.synchronize()), steps)


def time_targets(task, backend: str, q, steps: int, B: int = 64) -> dict:
    """One minibatch of targets: plans from B start states, K=36, H=4, 3 iterations, the biased model."""
    config = MPPIConfig.for_task(task, K=36, H=4, n_iters=3, model="biased")
    mppi = MPPI(task, config, backend, q=q)
    rng = np.random.default_rng(0)
    states = np.stack([task.initial_state(rng) for _ in range(B)])
    mppi.warm_up(states)
    return time_calls(lambda: mppi.plan(states), steps)


def device_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def run(steps: int) -> dict:
    import onnxruntime as ort
    import torch

    torch_cuda = torch.cuda.is_available()
    has_warp = importlib.util.find_spec("mujoco_warp") is not None  # the warp extra: its rows, or none
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in TASK_NAMES:
            task = get_task(name)
            path = Path(tmp) / name / "q.onnx"
            layers = save_random_q(task, HIDDEN, path, np.random.default_rng(0), "offboard.bench_gpu")
            q = OnnxQ(path, task)
            for K in SAMPLES:
                result = time_mpq(task, "cupy", K, H, q, steps)
                rows.append(dict(task=name, K=K, H=H, planner="mpq cupy", **result))
                if K == TARGET_K:  # what the CUDA graphs save: the same plan launched kernel by kernel
                    result = time_mpq(task, "cupy", K, H, q, steps, graphs=False)
                    rows.append(dict(task=name, K=K, H=H, planner="mpq cupy, no graph", **result))
                    rows.append(dict(task=name, K=K, H=H, planner="its Q alone", **time_q(task, q, K, steps)))
                if K == TARGET_K and has_warp:  # the MJCF itself, stepped by MuJoCo Warp
                    result = time_mpq(task, "warp", K, H, q, steps)
                    rows.append(dict(task=name, K=K, H=H, planner="mpq warp", **result))
                for dtype in ("float32", "float64") if torch_cuda else ():  # the peer at its best: both
                    result = time_pytorch_mppi(task, K, H, layers, steps, device="cuda", dtype=dtype)
                    rows.append(dict(task=name, K=K, H=H, planner=f"pytorch-mppi cuda {dtype}", **result))
            for backend in ("cupy", "warp") if has_warp else ("cupy",):  # one training minibatch of targets
                result = time_targets(task, backend, q, max(10, steps // 10))
                rows.append(dict(task=name, K=36, H=4, planner=f"targets 64x36 3 iters, {backend}", **result))

    def median(task, K, planner):
        return next((r["median_ms"] for r in rows if (r["task"], r["K"], r["planner"]) == (task, K, planner)), None)

    ours = median("pendulum", TARGET_K, "mpq cupy")
    peers = [median("pendulum", TARGET_K, f"pytorch-mppi cuda {dtype}") for dtype in ("float32", "float64")]
    theirs = min((t for t in peers if t is not None), default=None)  # pytorch-mppi at its best
    targets = [
        dict(
            target="pendulum K=4096 H=32: mpq cupy under 0.5 ms median (H100)",
            measured=f"{ours:.3f} ms",
            met=ours < 0.5,
        )
    ]
    if theirs is None:
        targets.append(
            dict(
                target="pendulum K=4096 H=32: >= 5x faster than pytorch-mppi on CUDA",
                measured="not run: this torch has no CUDA",
                met=False,
            )
        )
    else:
        targets.append(
            dict(
                target="pendulum K=4096 H=32: >= 5x faster than pytorch-mppi on CUDA",
                measured=f"{theirs / ours:.1f}x",
                met=theirs / ours >= 5,
            )
        )
    return dict(
        benchmark="mppi_control_step_gpu",
        device=device_name(),
        q_provider=next(r["q_provider"] for r in rows if "q_provider" in r),
        onnxruntime_providers=ort.get_available_providers(),
        torch_cuda=torch_cuda,
        warp=has_warp,
        machine=dict(platform=platform.platform(), python=platform.python_version()),
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        rows=rows,
        targets=targets,
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MPPI control step on {report['device']}, H={H}, Q 2x256 via {report['q_provider']}")
    for col in ("task", "K", "planner", "median ms", "p99 ms", "steps", "CUDA graph"):
        table.add_column(col)
    for r in report["rows"]:
        parts = "one graph" if r.get("graph_steps") == 1 else f"{r.get('graph_steps')} parts"  # graphs, ORT runs
        graph = {True: f"yes, {parts}", False: "no"}.get(r.get("cuda_graph"), "")
        table.add_row(
            r["task"], str(r["K"]), r["planner"], f"{r['median_ms']:.3f}", f"{r['p99_ms']:.3f}", str(r["steps"]), graph
        )
    console = Console()
    console.print(table)
    for t in report["targets"]:
        console.print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m offboard.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed control steps per row (after warm-up)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON report")
    args = parser.parse_args(argv)
    from onboard.backends.cupy_backend import _cupy

    try:
        _cupy()
    except RuntimeError as e:
        print(f"error: {e}: make bench-gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    publish(run(args.steps), args.out, "gpu", print_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
