"""`make bench`: MPPI control steps and the serial link's round trip on this machine, as JSON and tables.

Pendulum, closed loop on the planner's model from the hanging start, one MPPI iteration per step (as
pytorch-mppi's command runs), plus one row at the 3 iterations the pendulum's MPQ acts with:
  1. K=1024, H=32 with a 2x256 tanh MLP as terminal Q: the numpy backend, the C backend, and the
     PyPI package pytorch-mppi given the same dynamics, cost, K, H, sigma, lambda and the same MLP
     (in torch) as its terminal cost, all in one run.
  2. The paper's K=24, H=8 with a 2x100 Q.
Targets: (1) C backend >= 3x faster than pytorch-mppi; (2) under 0.25 ms median.
  3. The serial link in lockstep over a pty against the stand-in (pack, write, stand-in step, reply,
     parse): microseconds per round trip (target: median under 200 us for the pendulum), and the
     stand-in's lockstep steps per second with a trivial controller.
  4. The onboard loop (`python -m onboard run`, its own process, logging on): lockstep steps per
     second with K=24, H=8 and a 2x100 Q (target >= 1000; and at 3 iterations, no target); realtime
     with K=1024, H=32 and a 2x256 Q at the task's 20 Hz and at a 5 ms period, 60 s each: deadline
     misses (target 0) and period jitter p99; the same at 5 ms for 30 s beside one spinning process
     per core, once at the loop's SCHED_FIFO priority and once at normal priority (no target: it shows
     what the realtime priority buys); the onboard process's peak memory (target < 400 MB).
  5. The mujoco backend, planning by stepping the MJCF: MuJoCo steps per second against raw
     mujoco.rollout and a Python mj_step loop (offboard/bench_mujoco.py).
  6. Lockstep episodes through a faulty link at 0.1 %, 1 % and 5 % byte faults against a clean one
     (offboard/bench_link.py; target: every episode completes at 1 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from offboard import bench_link, bench_mujoco
from offboard.onnx_mlp import mlp_onnx, random_mlp
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ, save_q_model
from onboard.tasks import get_task

CASES = [
    dict(name="K=1024 H=32 Q=2x256", K=1024, H=32, hidden=(256, 256), steps=200),
    dict(name="K=24 H=8 Q=2x100", K=24, H=8, hidden=(100, 100), steps=2000),
    # What the pendulum's MPQ runs on the robot (the task's 3 iterations per step); no pytorch-mppi row.
    dict(name="K=24 H=8 Q=2x100 3 iters", K=24, H=8, hidden=(100, 100), steps=2000, n_iters=3),
]
WARMUP = 20
MODEL = "mean"  # fixed planner parameters, so every planner does the same work
ITERS = 1  # one MPPI iteration per control step, as pytorch-mppi's command does (the demo's pendulum acts with 3)


def _summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds[WARMUP:]) * 1e3
    return dict(median_ms=float(np.median(ms)), p99_ms=float(np.percentile(ms, 99)), steps=len(ms))


def time_calls(call, steps: int, between=None) -> dict:
    """Median and p99 ms of call() over `steps` calls after WARMUP ones; between(result), if given, runs untimed
    after each."""
    seconds = []
    for _ in range(steps + WARMUP):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if between is not None:
            between(result)
    return _summary(seconds)


def time_closed_loop(task, policy, steps: int) -> dict:
    """time_calls of policy(state) -> action from the hanging start, the planner's model stepping the state."""
    params = task.planner_params(MODEL, (), None)
    state = task.hanging_state()

    def step(action) -> None:
        nonlocal state
        state = task.step(state, action, params)

    return time_calls(lambda: policy(state), steps, between=step)


def time_mpq(task, backend: str, K: int, H: int, q, steps: int, n_iters: int = ITERS, graphs: bool = True) -> dict:
    mppi = MPPI(task, MPPIConfig.for_task(task, K=K, H=H, n_iters=n_iters, model=MODEL), backend, q=q)
    if hasattr(mppi.backend, "graphs"):  # the GPU: replay each plan as CUDA graphs, or launch kernel by kernel
        mppi.backend.graphs = graphs
    summary = time_closed_loop(task, mppi.act, steps)
    if hasattr(mppi.q, "provider"):  # the GPU's Q: which ONNX Runtime provider ran it
        summary["q_provider"] = mppi.q.provider
    if hasattr(mppi.backend, "replays_graphs"):
        summary["cuda_graph"] = mppi.backend.replays_graphs
        summary["graph_steps"] = mppi.backend.replay_steps  # 1: the Q's run inside the one graph
    return summary


def torch_model(task, params):
    """The task's planner dynamics, running cost and obs restated in torch for pytorch-mppi (batched over
    the leading axis; tests/offboard/test_bench.py holds them to the NumPy task)."""
    import torch

    if task.name == "pendulum":
        from onboard.tasks.pendulum import DT, V_MAX, W_THETADOT, G

        mass, length = float(params[0]), 2 * float(params[1])  # the rod's mass and its centre of mass

        def dynamics(s, u):  # s: [time, theta, thetadot]
            acc = 3 * G / (2 * length) * torch.sin(s[:, 1]) + 3 * u[:, 0] / (mass * length**2)
            v = torch.clamp(s[:, 2] + DT * acc, -V_MAX, V_MAX)  # the speed limit before the position update
            return torch.stack([s[:, 0] + DT, s[:, 1] + DT * v, v], dim=1)

        def running_cost(s, u):
            theta = torch.remainder(s[:, 1] + np.pi, 2 * np.pi) - np.pi
            return theta**2 + W_THETADOT * s[:, 2] ** 2

        def obs(s):
            return torch.cat([torch.cos(s[..., 1:2]), torch.sin(s[..., 1:2]), s[..., 2:]], dim=-1)

    elif task.name == "cartpole":
        from onboard.tasks.cartpole import CART_MASS, PHYSICS_DT, SUBSTEPS, W_HEIGHT, W_THETADOT, W_X, X_MAX, G

        mp, lc, b = (float(v) for v in params)  # the pole's mass, its centre of mass, the rail friction
        m11, m22 = CART_MASS + mp, 4 * mp * lc * lc / 3

        def dynamics(s, u):  # s: [time, x, theta, xdot, thetadot]
            x, th, xd, thd = s[:, 1], s[:, 2], s[:, 3], s[:, 4]
            for _ in range(SUBSTEPS):
                sn, cs = torch.sin(th), torch.cos(th)
                m12 = mp * lc * cs
                f1 = u[:, 0] - b * xd + mp * lc * sn * thd * thd
                f2 = mp * G * lc * sn
                det = m11 * m22 - m12 * m12
                xd = xd + PHYSICS_DT * (m22 * f1 - m12 * f2) / det
                thd = thd + PHYSICS_DT * (m11 * f2 - m12 * f1) / det
                x_next = x + PHYSICS_DT * xd
                stop = (torch.clamp(x_next, -X_MAX, X_MAX) - x) / PHYSICS_DT
                xd_stop = torch.where(torch.abs(x_next) > X_MAX, stop, xd)
                thd = thd - m12 * (xd_stop - xd) / m22
                xd = xd_stop
                x = x + PHYSICS_DT * xd
                th = th + PHYSICS_DT * thd
            return torch.stack([s[:, 0] + PHYSICS_DT * SUBSTEPS, x, th, xd, thd], dim=1)

        def running_cost(s, u):
            return W_HEIGHT * (1 - torch.cos(s[:, 2])) + W_X * s[:, 1] ** 2 + W_THETADOT * s[:, 4] ** 2

        def obs(s):
            th = s[..., 2:3]
            return torch.cat([s[..., 1:2], torch.cos(th), torch.sin(th), s[..., 3:]], dim=-1)

    else:
        raise ValueError(f"no torch restatement of task {task.name!r} for pytorch-mppi")
    return dynamics, running_cost, obs


def torch_mlp(layers, device: str = "cpu"):
    import torch

    net = torch.nn.Sequential()
    for i, (W, b) in enumerate(layers):
        linear = torch.nn.Linear(W.shape[0], W.shape[1])
        linear.weight.data = torch.tensor(W.T, dtype=torch.float32)
        linear.bias.data = torch.tensor(b, dtype=torch.float32)
        net.append(linear)
        if i < len(layers) - 1:
            net.append(torch.nn.Tanh())
    return net.to(device)


def time_pytorch_mppi(task, K: int, H: int, layers, steps: int, device: str = "cpu") -> dict:
    """pytorch-mppi with the task's dynamics and cost written in torch, and the same MLP as terminal cost."""
    import torch
    from pytorch_mppi import MPPI as TorchMPPI

    params = task.planner_params(MODEL, (), None)
    dynamics, running_cost, obs = torch_model(task, params)
    net = torch_mlp(layers, device)

    def terminal_cost(states, actions):
        x = torch.cat([obs(states[..., -1, :]), actions[..., -1, :]], dim=-1)
        with torch.no_grad():
            return net(x.float()).double()[..., 0]

    cfg = MPPIConfig.for_task(task, K=K, H=H)
    sigma = torch.tensor(np.diag(np.broadcast_to(cfg.sigma, (task.act_dim,))), dtype=torch.float64)
    ctrl = TorchMPPI(
        dynamics, running_cost, task.state_dim, noise_sigma=sigma, num_samples=K, horizon=H, lambda_=cfg.lam,
        u_min=torch.tensor(task.u_min), u_max=torch.tensor(task.u_max), terminal_state_cost=terminal_cost,
        device=device,
    )  # fmt: skip

    def policy(state):
        with torch.no_grad():
            return ctrl.command(torch.tensor(state, device=device)).cpu().numpy()  # .cpu(): waits for the GPU

    return time_closed_loop(task, policy, steps)


def run_link(steps: int) -> dict:
    """Lockstep round trips host <-> stand-in over a real pty, pendulum, u = -0.5 thetadot."""
    from firmware_bridge.link import Link

    process = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.standin", "--task", "pendulum"], stdout=subprocess.PIPE, text=True
    )
    link = None
    try:
        port = json.loads(process.stdout.readline())["port"]
        link = Link(port, "pendulum", 3, 1)
        link.handshake()
        state = link.reset(1, state=[0.0, np.pi - 0.1, 0.0])
        link.arm()
        seconds = []
        started = time.perf_counter()
        for _ in range(steps + WARMUP):
            sent = time.perf_counter()
            link.send_command([-0.5 * state.state[2]], state.seq)
            state = link.recv_state(timeout=1.0)
            if state is None:
                raise RuntimeError("the stand-in stopped answering during the link benchmark")
            seconds.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
        stats = link.stats()
    finally:
        if link is not None:
            link.close()
        process.terminate()
        process.wait()
    us = np.asarray(seconds[WARMUP:]) * 1e6
    median = float(np.median(us))
    return dict(
        round_trip_us_median=median,
        round_trip_us_p99=float(np.percentile(us, 99)),
        steps_per_second=(steps + WARMUP) / elapsed,
        steps=steps,
        link_counters={k: v for k, v in stats.items() if not k.startswith("rtt")},
        target=dict(
            target="pendulum lockstep round trip median under 200 us", measured=f"{median:.0f} us", met=median < 200
        ),
    )


def _onboard_run(profile: dict, episodes: int, tmp: Path) -> dict:
    path = tmp / "robots" / f"{profile['name']}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in profile.items() if k != "mppi"]
    lines += ["[mppi]"] + [f"{k} = {json.dumps(v)}" for k, v in profile.get("mppi", {}).items()]
    path.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "onboard",
            "run",
            "--robot",
            str(path),
            "--episodes",
            str(episodes),
            "--quiet",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return dict(error=out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_loop(quick: bool) -> dict:
    """The onboard loop in its own process against the stand-in, logging on."""
    task = get_task("pendulum")
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {}
        for hidden in ((100, 100), (256, 256)):
            layers = random_mlp(rng, task.obs_dim + task.act_dim, hidden)
            models[hidden] = tmp / f"q{hidden[0]}" / "q.onnx"
            save_q_model(mlp_onnx(layers, task.obs_dim, task.act_dim), models[hidden], task, {"name": "offboard.bench"})
        base = dict(task="pendulum", backend="c", log_dir=str(tmp / "data"), threads=1)
        lockstep = _onboard_run(
            dict(name="bench-lockstep", mode="lockstep", model=str(models[(100, 100)]), **base,
                 mppi=dict(K=24, H=8, n_iters=ITERS, model="mean")),
            1 if quick else 10, tmp,
        )  # fmt: skip
        acting = _onboard_run(  # what the pendulum's MPQ runs: the task's 3 iterations per step
            dict(name="bench-lockstep-3", mode="lockstep", model=str(models[(100, 100)]), **base,
                 mppi=dict(K=24, H=8, n_iters=3, model="mean")),
            1 if quick else 10, tmp,
        )  # fmt: skip
        seconds = 2 if quick else 60
        realtime, loaded = {}, {}
        rates = (("20 Hz", 0.05),) if quick else (("20 Hz", 0.05), ("200 Hz", 0.005))  # quick: a smoke run
        for label, period in rates:
            realtime[label] = _realtime_run(task, models[(256, 256)], base, period, seconds, tmp)
        # Beside CPU hogs (on a robot: pull-data's rsync and hashing, a camera driver): what SCHED_FIFO buys.
        for label, priority in (("SCHED_FIFO 50", 50), ("normal priority", 0)):
            with cpu_hogs(os.cpu_count() or 1):
                loaded[label] = _realtime_run(task, models[(256, 256)], {**base, "realtime_priority": priority},
                                              0.005, seconds / 2, tmp)  # fmt: skip
    peak = max(r.get("peak_rss_mb", 0) for r in [lockstep, acting, *realtime.values(), *loaded.values()])
    targets = [
        dict(
            target="onboard lockstep loop >= 1000 steps/s (K=24 H=8 1 iteration Q=2x100, logging on)",
            measured=f"{lockstep.get('steps_per_second', 0):.0f} steps/s",
            met=lockstep.get("steps_per_second", 0) >= 1000,
        ),
        *[
            dict(
                target=f"realtime {label} K=1024 H=32 1 iteration Q=2x256: 0 deadline misses over {seconds} s",
                measured=f"{r.get('deadline_misses', 'n/a')} misses, "
                f"jitter p99 {r.get('period_jitter_ms_p99', 0):.2f} ms, {r.get('scheduling', 'n/a')}",
                met=r.get("deadline_misses") == 0,
            )
            for label, r in realtime.items()
        ],
        dict(target="onboard process peak memory < 400 MB", measured=f"{peak:.0f} MB", met=0 < peak < 400),
    ]
    return dict(lockstep=lockstep, lockstep_3_iters=acting, realtime=realtime, realtime_loaded=loaded, targets=targets)


def _realtime_run(task, model: Path, base: dict, period: float, seconds: float, tmp: Path) -> dict:
    """K=1024, H=32, one iteration, with a 2x256 Q, at `period` for about `seconds`."""
    return _onboard_run(
        dict(name=f"bench-rt{round(1 / period)}", mode="realtime", model=str(model), standin_period=period,
             deadline_misses_max=1_000_000, **base, mppi=dict(K=1024, H=32, n_iters=ITERS, model="mean")),
        max(1, round(seconds / (period * task.episode_steps))), tmp,
    )  # fmt: skip


@contextmanager
def cpu_hogs(n: int):
    """n processes that spin at normal priority while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run(threads: int, quick: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    task = get_task("pendulum")
    rng = np.random.default_rng(0)
    rows, case_configs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            steps = 30 if quick else case["steps"]
            layers = random_mlp(rng, task.obs_dim + task.act_dim, case["hidden"])
            path = Path(tmp) / case["name"].replace(" ", "_") / "q.onnx"
            save_q_model(mlp_onnx(layers, task.obs_dim, task.act_dim), path, task, {"name": "offboard.bench"})
            q = OnnxQ(path, task, threads=threads)
            n_iters = case.get("n_iters", ITERS)
            for backend in ("numpy", "c"):
                result = time_mpq(task, backend, case["K"], case["H"], q, steps, n_iters)
                rows.append(dict(case=case["name"], planner=f"mpq {backend}", **result))
            config = MPPIConfig.for_task(task, K=case["K"], H=case["H"], n_iters=n_iters, model=MODEL)
            case_configs[case["name"]] = dict(mppi=config.to_dict(), q_hidden=list(case["hidden"]))
            if n_iters == ITERS:  # pytorch-mppi's command runs one iteration
                result = time_pytorch_mppi(task, case["K"], case["H"], layers, steps)
                rows.append(dict(case=case["name"], planner="pytorch-mppi", **result))

    def median(case, planner):
        return next(r["median_ms"] for r in rows if r["case"] == case and r["planner"] == planner)

    big, small = CASES[0]["name"], CASES[1]["name"]
    speedup = median(big, "pytorch-mppi") / median(big, "mpq c")
    targets = [
        dict(target=f"{big}: mpq c >= 3x faster than pytorch-mppi", measured=f"{speedup:.1f}x", met=speedup >= 3),
        dict(
            target=f"{small} (1 iteration): mpq c under 0.25 ms median",
            measured=f"{median(small, 'mpq c'):.3f} ms",
            met=median(small, "mpq c") < 0.25,
        ),
    ]
    return dict(
        benchmark="mppi_control_step and serial_link",
        task="pendulum",
        planner_model=MODEL,
        threads=threads,
        machine=dict(cpu_count=os.cpu_count(), platform=platform.platform(), python=platform.python_version()),
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        cases=case_configs,
        rows=rows,
        targets=targets,
        link=run_link(200 if quick else 5000),
        loop=run_loop(quick),
        mujoco=bench_mujoco.run(threads, quick),
        faults=bench_link.run(quick),
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MPPI control step, pendulum ({report['threads']} threads)")
    for col in ("case", "planner", "median ms", "p99 ms", "steps"):
        table.add_column(col)
    for r in report["rows"]:
        table.add_row(r["case"], r["planner"], f"{r['median_ms']:.3f}", f"{r['p99_ms']:.3f}", str(r["steps"]))
    console = Console() if sys.stdout.isatty() else Console(width=120)  # a log keeps the rows on one line each
    console.print(table)
    link = report["link"]
    table = Table(title="Serial link, lockstep over a pty, pendulum stand-in")
    for col in ("round trip median us", "p99 us", "stand-in steps/s", "steps"):
        table.add_column(col)
    table.add_row(
        f"{link['round_trip_us_median']:.0f}", f"{link['round_trip_us_p99']:.0f}", f"{link['steps_per_second']:.0f}",
        str(link["steps"]),
    )  # fmt: skip
    console.print(table)
    loop = report["loop"]
    table = Table(title="Onboard loop against the stand-in (own process, logging on; 1 MPPI iteration unless named)")
    for col in ("run", "steps/s", "plan p50 ms", "plan p99 ms", "misses", "jitter p99 ms", "peak MB"):
        table.add_column(col)
    for label, r in (
        [
            ("lockstep K=24 H=8", loop["lockstep"]),
            ("lockstep K=24 H=8 3 iters", loop["lockstep_3_iters"]),
        ]
        + [(f"realtime {k} K=1024 H=32", v) for k, v in loop["realtime"].items()]
        + [(f"realtime 200 Hz + CPU hogs, {k}", v) for k, v in loop["realtime_loaded"].items()]
    ):
        if "error" in r:
            table.add_row(
                label, r["error"].removeprefix("error: ").split(":")[0], "", "", "", "", ""
            )  # the JSON has it all
            continue
        table.add_row(
            label, f"{r['steps_per_second']:.0f}", f"{r['plan_ms_p50']:.2f}", f"{r['plan_ms_p99']:.2f}",
            str(r["deadline_misses"]), "" if label.startswith("lockstep") else f"{r['period_jitter_ms_p99']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
        )  # fmt: skip
    console.print(table)
    for t in [*report["targets"], link["target"], *loop["targets"]]:
        console.print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    bench_mujoco.print_table(report["mujoco"], console)
    bench_link.print_table(report["faults"], console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT and torch threads")
    parser.add_argument("--quick", action="store_true", help="a few steps per row (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON report")
    args = parser.parse_args()
    publish(run(args.threads, args.quick), args.out, "mppi", print_table)


def publish(report: dict, out: Path, prefix: str, print_table) -> Path:
    """The report as JSON on stdout and in `out/<prefix>-<time>.json`, then as tables."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print_table(report)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
