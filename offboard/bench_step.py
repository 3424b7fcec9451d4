"""make bench's MPPI control step: mpq against pytorch-mppi at its best, beside the limit of the hardware.

Pendulum, closed loop on the planner's model from the hanging start, one MPPI iteration per step (as
pytorch-mppi's `command` runs), at each thread count (1 and the machine's):
  1. K=1024, H=32 with a 2x256 tanh MLP as terminal Q; 2. the paper's K=24, H=8 with a 2x100 Q;
  3. K=24, H=8 at the 3 iterations the pendulum's MPQ acts with (mpq only: pytorch-mppi runs one).
Every planner of a case runs in one process, in interleaved rounds (a block of steps each, the order
rotated every round), so a slow minute of the machine falls on all of them alike:
  - mpq numpy and mpq c (a whole plan: noise, rollout, Q, update), and `mpq c in the loop`: the step from
    state to action as the onboard loop runs it, the plan's noise drawn while the plant stepped (untimed);
  - pytorch-mppi (PyPI) given the same dynamics, cost, K, H, sigma, lambda and the same MLP (in torch) as
    its terminal cost, in float32 and in float64, on the same thread count: each row names its setting,
    and mpq is compared with the faster of the two (its best);
  - the limit: the Q alone at the plan's batch (ONNX Runtime, same threads) and the C rollout alone (K x H
    steps): a plan cannot cost less than n_iters x (Q + rollout); each mpq row shows its ratio to that.
Targets: K=1024 H=32 mpq c >= 5x faster than pytorch-mppi at its best and within 1.3x of Q + rollout;
K=24 H=8 at 3 iterations under 0.25 ms median.
  4. Growth: mpq c's plan time for K from 256 to 16384 (H=32) and H from 4 to 64 (K=1024), 1 thread, per
     sample-step, beside the plan's working set and this CPU's caches: linear while the per-step time stays
     flat, and the knee where the working set leaves a cache.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from offboard.onnx_mlp import save_random_q
from onboard.mppi import MPPI, MPPIConfig
from onboard.qfunction import OnnxQ
from onboard.tasks import get_task

CASES = [
    dict(name="K=1024 H=32 Q=2x256", K=1024, H=32, hidden=(256, 256), rounds=10, block=20),
    dict(name="K=24 H=8 Q=2x100", K=24, H=8, hidden=(100, 100), rounds=10, block=200),
    # What the pendulum's MPQ runs on the robot (the task's 3 iterations per step); no pytorch-mppi row.
    dict(name="K=24 H=8 Q=2x100 3 iters", K=24, H=8, hidden=(100, 100), rounds=10, block=200, n_iters=3),
]
GROWTH_K = (256, 1024, 4096, 16384)  # at H=32
GROWTH_H = (4, 8, 16, 32, 64)  # at K=1024
WARMUP = 20
MODEL = "mean"  # fixed planner parameters, so every planner does the same work
ITERS = 1  # one MPPI iteration per control step, as pytorch-mppi's command does (the demo's pendulum acts with 3)
LIMIT = ("Q alone", "rollout alone")
AHEAD = "mpq c in the loop"  # the state-to-action step as the onboard loop runs it


def _summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return dict(median_ms=float(np.median(ms)), p99_ms=float(np.percentile(ms, 99)), steps=len(ms))


class Timed:
    """One contender: call() timed once per step; between(result), if given, runs untimed after each (a closed
    loop stepping its state). Its timings accumulate over the blocks it is given."""

    def __init__(self, call, between=None):
        self.call, self.between, self.seconds = call, between, []

    def block(self, steps: int, keep: bool = True) -> None:
        for _ in range(steps):
            started = time.perf_counter()
            result = self.call()
            elapsed = time.perf_counter() - started
            if keep:
                self.seconds.append(elapsed)
            if self.between is not None:
                self.between(result)


def closed_loop(task, policy, meanwhile=None) -> Timed:
    """policy(state) -> action from the hanging start, the planner's model stepping the state untimed, and
    meanwhile(), if given, untimed after each action (what a loop does while the plant steps)."""
    params = task.planner_params(MODEL, (), None)
    state = task.hanging_state()

    def step(action) -> None:
        nonlocal state
        if meanwhile is not None:
            meanwhile()
        state = task.step(state, action, params)

    return Timed(lambda: policy(state), step)


def measure(timed: Timed, steps: int) -> dict:
    """Median and p99 ms over `steps` steps after WARMUP ones."""
    timed.block(WARMUP, keep=False)
    timed.block(steps)
    return _summary(timed.seconds)


def time_calls(call, steps: int, between=None) -> dict:
    return measure(Timed(call, between), steps)


def interleaved(contenders: dict[str, Timed], rounds: int, block: int) -> dict[str, dict]:
    """Each contender warmed up, then `rounds` rounds of `block` steps each, the order rotated every round."""
    names = list(contenders)
    for timed in contenders.values():
        timed.block(WARMUP, keep=False)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            contenders[name].block(block)
    return {name: _summary(contenders[name].seconds) for name in names}


def mpq_planner(task, backend: str, K: int, H: int, q, n_iters: int = ITERS, graphs: bool = True) -> MPPI:
    mppi = MPPI(task, MPPIConfig.for_task(task, K=K, H=H, n_iters=n_iters, model=MODEL), backend, q=q)
    if hasattr(mppi.backend, "graphs"):  # the GPU: replay each plan as CUDA graphs, or launch kernel by kernel
        mppi.backend.graphs = graphs
    return mppi


def time_mpq(task, backend: str, K: int, H: int, q, steps: int, n_iters: int = ITERS, graphs: bool = True) -> dict:
    mppi = mpq_planner(task, backend, K, H, q, n_iters, graphs)
    summary = measure(closed_loop(task, mppi.act), steps)
    if hasattr(mppi.q, "provider"):  # the GPU's Q: which ONNX Runtime provider ran it
        summary["q_provider"] = mppi.q.provider
    if hasattr(mppi.backend, "replays_graphs"):
        summary["cuda_graph"] = mppi.backend.replays_graphs
        summary["graph_steps"] = mppi.backend.replay_steps  # 1: the Q's run inside the one graph
    return summary


# --- pytorch-mppi ---------------------------------------------------------------------------------------------
def torch_model(task, params):
    """The task's planner dynamics, running cost and obs restated in torch for pytorch-mppi (batched over
    the leading axis; tests/offboard/test_bench.py holds them to the NumPy task). Python-float constants, so
    they run in the states' own dtype."""
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


def pytorch_mppi_policy(task, K: int, H: int, layers, device: str = "cpu", dtype: str = "float32"):
    """pytorch-mppi with the task's dynamics and cost written in torch, the same MLP as terminal cost, its
    arrays in `dtype` (the MLP runs in float32 as ONNX Runtime runs mpq's; float64 rollouts cast to it)."""
    import torch
    from pytorch_mppi import MPPI as TorchMPPI

    real = getattr(torch, dtype)
    params = task.planner_params(MODEL, (), None)
    dynamics, running_cost, obs = torch_model(task, params)
    net = torch_mlp(layers, device)

    def terminal_cost(states, actions):
        x = torch.cat([obs(states[..., -1, :]), actions[..., -1, :]], dim=-1)
        with torch.no_grad():
            return net(x.float()).to(real)[..., 0]

    cfg = MPPIConfig.for_task(task, K=K, H=H)
    sigma = torch.tensor(np.diag(np.broadcast_to(cfg.sigma, (task.act_dim,))), dtype=real)
    ctrl = TorchMPPI(
        dynamics,
        running_cost,
        task.state_dim,
        noise_sigma=sigma,
        num_samples=K,
        horizon=H,
        lambda_=cfg.temperature,
        u_min=torch.tensor(task.u_min, dtype=real),
        u_max=torch.tensor(task.u_max, dtype=real),
        terminal_state_cost=terminal_cost,
        device=device,
    )

    def policy(state):
        with torch.no_grad():
            return ctrl.command(torch.tensor(state, dtype=real, device=device)).cpu().double().numpy()  # waits

    return policy


def time_pytorch_mppi(task, K: int, H: int, layers, steps: int, device: str = "cpu", dtype: str = "float32") -> dict:
    return measure(closed_loop(task, pytorch_mppi_policy(task, K, H, layers, device, dtype)), steps)


# --- the comparison -------------------------------------------------------------------------------------------
def limit_contenders(task, mppi: MPPI, q) -> dict[str, Timed]:
    """The two parts no plan can skip, at the plan's size: the Q on K samples, and the C rollout of K x H."""
    rng = np.random.default_rng(0)
    K, H, m = mppi.config.K, mppi.config.H, task.act_dim
    obs, act = rng.standard_normal((K, task.obs_dim)), rng.uniform(task.u_min, task.u_max, (K, m))
    states = task.hanging_state()[None]
    actions = rng.uniform(task.u_min, task.u_max, (1, K, H, m))
    params = task.planner_params(MODEL, (), None)
    rollout, gamma = mppi.backend.rollout, mppi.config.gamma
    return {
        "Q alone": Timed(lambda: q(obs, act)),
        "rollout alone": Timed(lambda: rollout(states, actions, params, gamma)),
    }


def compare(threads: int, quick: bool, tmp: Path) -> list[dict]:
    """Every case's rows at one thread count (ORT's and torch's threads; the C rollout runs on one)."""
    import torch

    torch.set_num_threads(threads)
    task = get_task("pendulum")
    rng = np.random.default_rng(0)
    rows = []
    for case in CASES:
        path = tmp / case["name"].replace(" ", "_") / "q.onnx"
        layers = save_random_q(task, case["hidden"], path, rng, "offboard.bench")
        q = OnnxQ(path, task, threads=threads)
        n_iters = case.get("n_iters", ITERS)
        planners = {f"mpq {b}": mpq_planner(task, b, case["K"], case["H"], q, n_iters) for b in ("numpy", "c")}
        contenders = {name: closed_loop(task, mppi.act) for name, mppi in planners.items()}
        settings = {name: "float64" for name in planners}
        # The onboard loop's control step: the same plan, its noise drawn while the plant stepped (draw_ahead).
        ahead = mpq_planner(task, "c", case["K"], case["H"], q, n_iters)
        contenders[AHEAD] = closed_loop(task, ahead.act, meanwhile=ahead.draw_ahead)
        settings[AHEAD] = "float64, noise drawn ahead"
        if n_iters == ITERS:  # pytorch-mppi's command runs one iteration
            for dtype in ("float32", "float64"):
                name = f"pytorch-mppi {dtype}"
                contenders[name] = closed_loop(
                    task, pytorch_mppi_policy(task, case["K"], case["H"], layers, dtype=dtype)
                )
                settings[name] = dtype
        contenders.update(limit_contenders(task, planners["mpq c"], q))
        settings.update({"Q alone": f"ORT, batch {case['K']}", "rollout alone": f"C, {case['K']}x{case['H']} steps"})
        rounds, block = (2, 5) if quick else (case["rounds"], case["block"])
        summaries = interleaved(contenders, rounds, block)
        limit = n_iters * sum(summaries[name]["median_ms"] for name in LIMIT)
        peers = [s["median_ms"] for name, s in summaries.items() if name.startswith("pytorch-mppi")]
        for name, summary in summaries.items():
            row = dict(case=case["name"], threads=threads, planner=name, setting=settings[name], **summary)
            if name.startswith("mpq"):
                row["x_limit"] = summary["median_ms"] / limit
                if peers:
                    row["x_faster_than_best_peer"] = min(peers) / summary["median_ms"]
            rows.append(row)
    return rows


def growth(quick: bool, tmp: Path) -> dict:
    """mpq c's plan time against K and H (1 thread, 2x256 Q), per sample-step, with the working set."""
    task = get_task("pendulum")
    path = tmp / "growth" / "q.onnx"
    save_random_q(task, (256, 256), path, np.random.default_rng(0), "offboard.bench")
    q = OnnxQ(path, task, threads=1)
    points = [(K, 32) for K in GROWTH_K] + [(1024, H) for H in GROWTH_H if H != 32]
    rows = []
    for K, H in points:
        mppi = mpq_planner(task, "c", K, H, q)
        summary = measure(closed_loop(task, mppi.act), 5 if quick else max(20, min(200, 2_000_000 // (K * H))))
        rows.append(
            dict(
                K=K,
                H=H,
                **summary,
                ns_per_sample_step=summary["median_ms"] * 1e6 / (K * H),
                working_set_kib=K * mppi.sample_bytes // 1024,
            )
        )  # (MPPI's own estimate)
    return dict(rows=rows, caches_kib=cpu_caches())


def cpu_caches() -> dict[str, int]:
    """This CPU's data caches in KiB (Linux sysfs; empty elsewhere)."""
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind, level = (index / "type").read_text().strip(), (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            caches[f"L{level}"] = int(size.rstrip("K")) if size.endswith("K") else int(size.rstrip("M")) * 1024
    return caches


def run(threads: int, quick: bool) -> dict:
    thread_counts = sorted({1, threads})
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for n in thread_counts for row in compare(n, quick, Path(tmp))]
        grown = growth(quick, Path(tmp))
    task = get_task("pendulum")
    cases = {
        case["name"]: dict(
            mppi=MPPIConfig.for_task(
                task, K=case["K"], H=case["H"], model=MODEL, n_iters=case.get("n_iters", ITERS)
            ).to_dict(),
            q_hidden=list(case["hidden"]),
        )
        for case in CASES
    }
    return dict(thread_counts=thread_counts, cases=cases, rows=rows, growth=grown, targets=targets(rows))


def targets(rows: list[dict]) -> list[dict]:
    def row(case, threads, planner):
        return next(r for r in rows if (r["case"], r["threads"], r["planner"]) == (case, threads, planner))

    big, acting = CASES[0]["name"], CASES[2]["name"]
    found = []
    for threads in sorted({r["threads"] for r in rows}):
        ours = row(big, threads, "mpq c")
        found += [
            dict(
                target=f"{big} ({threads} thread{'s' * (threads > 1)}): mpq c >= 5x faster than pytorch-mppi at "
                "its best",
                measured=f"{ours['x_faster_than_best_peer']:.1f}x",
                met=ours["x_faster_than_best_peer"] >= 5,
            ),
            dict(
                target=f"{big} ({threads} thread{'s' * (threads > 1)}): mpq c within 1.3x of Q + rollout",
                measured=f"{ours['x_limit']:.2f}x",
                met=ours["x_limit"] <= 1.3,
            ),
            dict(
                target=f"{acting} ({threads} thread{'s' * (threads > 1)}): mpq c under 0.25 ms median",
                measured=f"{row(acting, threads, 'mpq c')['median_ms']:.3f} ms",
                met=row(acting, threads, "mpq c")["median_ms"] < 0.25,
            ),
        ]
    return found


def print_table(report: dict, console) -> None:
    from rich.table import Table

    for threads in report["thread_counts"]:
        table = Table(
            title=f"MPPI control step, pendulum, {threads} thread{'s' * (threads > 1)} (ORT, torch): mpq, "
            "pytorch-mppi at each setting, the limit (Q + rollout)"
        )
        for col in ("case", "planner", "setting", "median ms", "p99 ms", "steps", "x limit", "x best peer"):
            table.add_column(col)
        for r in report["rows"]:
            if r["threads"] != threads:
                continue
            x_limit = f"{r['x_limit']:.2f}" if "x_limit" in r else ""
            x_peer = f"{r['x_faster_than_best_peer']:.1f}" if "x_faster_than_best_peer" in r else ""
            table.add_row(
                r["case"],
                r["planner"],
                r["setting"],
                f"{r['median_ms']:.3f}",
                f"{r['p99_ms']:.3f}",
                str(r["steps"]),
                x_limit,
                x_peer,
            )
        console.print(table)
    caches = ", ".join(f"{k} {v} KiB" for k, v in report["growth"]["caches_kib"].items())
    table = Table(title=f"Growth: mpq c, 1 thread, Q 2x256 (this CPU's caches: {caches or 'unknown'})")
    for col in ("K", "H", "median ms", "p99 ms", "ns per sample", "ns per sample-step", "plan arrays KiB"):
        table.add_column(col)
    for r in report["growth"]["rows"]:
        table.add_row(
            str(r["K"]),
            str(r["H"]),
            f"{r['median_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['median_ms'] * 1e6 / r['K']:.0f}",
            f"{r['ns_per_sample_step']:.1f}",
            str(r["working_set_kib"]),
        )
    console.print(table)
    for t in report["targets"]:
        console.print(f"{'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
