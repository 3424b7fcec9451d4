"""Model Predictive Q-Learning (Bhardwaj et al., L4DC 2020), readable top to bottom. See docs/algorithm.md.

Q(s, a) is an MLP trained on real (here: stand-in) transitions with soft-Bellman targets
    y = c(s, a) + gamma * V_H(s'),
where V_H(s') is the free energy of H-step MPPI from s' (n_iters iterations, the BIASED planner
model) with the CURRENT Q as its terminal value -- the very MPPI code the robot runs (onboard.mppi),
batched over the minibatch's next states. No target network (MPQ); the soft-Q baseline is the same
code with H = 1 and a target network. Episodes end on a time limit, so every transition bootstraps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from offboard.dataset import ReplayBuffer, load_replay_buffer
from onboard.mppi import MPPI, MPPIConfig
from onboard.tasks import get_task


@dataclass
class Config:
    """Every setting of a training run; the paper leaves N_update, K, M and the buffer to us (docs/algorithm.md)."""

    task: str = "pendulum"
    data: tuple[str, ...] = ("data/sim",)  # robot log folders (verified MCAP segments)
    out: str = "runs/train"  # a run folder <out>/<time> gets the config, checkpoints and TensorBoard
    iterations: int = 5  # training iterations (a checkpoint each)
    updates_per_iteration: int = 100  # M minibatches per iteration
    batch_size: int = 64  # K transitions per minibatch
    buffer_window: int = 0  # train on the newest N transitions (0: all of them)
    hidden: tuple[int, ...] = (100, 100)  # paper: two hidden layers of 100 tanh units
    lr: float = 1e-3  # paper: Adam, 1e-3
    # The target MPPI's H and iterations; None: the ones the task acts with (the pendulum: the paper's
    # H=8 and 3 iterations), so the Q learns the value of the planner that will use it. H=1: soft Q.
    horizon: int | None = None
    target_iters: int | None = None
    planner_model: str = "biased"  # the planner's model: always the biased one when learning
    target_network: bool = False  # MPQ: no; the soft-Q baseline: yes
    target_sync_every: int = 100  # updates between target-network copies (baseline only)
    holdout_fraction: float = 0.1  # transitions kept out of training to measure the Bellman error
    backend: str | None = None  # the targets' MPPI: None is c where the task has a closed-form model, else mujoco
    seed: int = 0
    torch_threads: int = 2

    def __post_init__(self):
        task = get_task(self.task)
        acting = MPPIConfig.for_task(task)
        if self.backend is None:
            self.backend = "c" if task.has_analytic_model else "mujoco"
        self.horizon = acting.H if self.horizon is None else self.horizon
        self.target_iters = acting.n_iters if self.target_iters is None else self.target_iters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class QNetwork(nn.Module):
    """Q(obs, a): an MLP over the concatenated observation and action, tanh hidden units."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(100, 100)):
        super().__init__()
        layers, width = [], obs_dim + act_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class TorchQ:
    """The torch net as MPPI's terminal value: (obs, act) NumPy in, q NumPy out. MPPI cannot tell it
    from the ONNX Q the robot runs."""

    def __init__(self, net: QNetwork):
        self.net = net

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        q = self.net(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32))
        return q.numpy().astype(np.float64)


def target_planner(config: Config, task, q) -> MPPI:
    """The MPPI that computes V_H(s'): the task's paper settings, the config's H and iterations."""
    if config.backend not in ("numpy", "c", "mujoco"):  # the Q being trained is a CPU torch net fed NumPy arrays
        raise ValueError(
            f"training targets run on the CPU: backend {config.backend!r} is for the robot; use c, numpy or mujoco"
        )
    mppi = MPPIConfig.for_task(
        task, H=config.horizon, n_iters=config.target_iters, model=config.planner_model, seed=config.seed
    )
    return MPPI(task, mppi, config.backend, q=q)


def soft_bellman_targets(planner: MPPI, buffer: ReplayBuffer, idx: np.ndarray) -> np.ndarray:
    """y = c + gamma * V_H(s') (no bootstrap only where the plant truly terminated)."""
    value = planner.plan(buffer.next_state[idx]).value
    return buffer.cost[idx] + planner.config.gamma * np.where(buffer.terminal[idx], 0.0, value)


def bellman_error(net: QNetwork, planner: MPPI, buffer: ReplayBuffer, idx: np.ndarray) -> float:
    """Mean squared soft-Bellman residual on the given transitions."""
    y = soft_bellman_targets(planner, buffer, idx)
    with torch.no_grad():
        q = net(
            torch.as_tensor(buffer.obs[idx], dtype=torch.float32),
            torch.as_tensor(buffer.action[idx], dtype=torch.float32),
        )
    return float(np.mean((y - q.numpy()) ** 2))


@dataclass
class TrainResult:
    net: QNetwork
    run_dir: Path
    history: list[dict]
    buffer: ReplayBuffer
    problems: list[str]
    config: Config


def train(config: Config, net: QNetwork | None = None, progress: bool = True, log=print) -> TrainResult:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.torch_threads)
    rng = np.random.default_rng(config.seed)
    task = get_task(config.task)

    # 1. Data: verified segments only, newest window, a held-out slice for the Bellman error.
    buffer, problems = load_replay_buffer([Path(d) for d in config.data], task)
    for problem in problems:
        log(f"left out: {problem}")
    buffer = buffer.window(config.buffer_window)
    order = rng.permutation(len(buffer))
    n_holdout = max(1, int(config.holdout_fraction * len(buffer)))
    holdout, train_idx = order[:n_holdout], order[n_holdout:]

    # 2. Q, its optimiser, and the planners that compute targets with it.
    net = net or QNetwork(task.obs_dim, task.act_dim, config.hidden)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    target_net = copy.deepcopy(net) if config.target_network else None
    planner = target_planner(config, task, TorchQ(target_net if target_net is not None else net))
    judge = target_planner(config, task, TorchQ(net))  # held-out error: always against the current Q

    run_dir = Path(config.out) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    history = [dict(iteration=0, holdout_bellman_error=bellman_error(net, judge, buffer, holdout))]
    updates = 0
    bar = tqdm(total=config.iterations * config.updates_per_iteration, disable=not progress, desc="MPQ", unit="update")

    # 3. Algorithm 1's update: M minibatches of K transitions, MPPI targets with the current Q, MSE, Adam.
    for iteration in range(1, config.iterations + 1):
        losses, targets, qs = [], [], []
        for _ in range(config.updates_per_iteration):
            idx = rng.choice(train_idx, size=min(config.batch_size, len(train_idx)), replace=False)
            y = torch.as_tensor(soft_bellman_targets(planner, buffer, idx), dtype=torch.float32)
            q = net(
                torch.as_tensor(buffer.obs[idx], dtype=torch.float32),
                torch.as_tensor(buffer.action[idx], dtype=torch.float32),
            )
            loss = torch.mean((y - q) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            if target_net is not None and updates % config.target_sync_every == 0:
                target_net.load_state_dict(net.state_dict())
            losses.append(loss.item())
            targets.append(y.mean().item())
            qs.append(q.mean().item())
            bar.update(1)
        record = dict(
            iteration=iteration,
            loss=float(np.mean(losses)),
            mean_target=float(np.mean(targets)),
            mean_q=float(np.mean(qs)),
            holdout_bellman_error=bellman_error(net, judge, buffer, holdout),
        )
        history.append(record)
        for key in ("loss", "mean_target", "mean_q", "holdout_bellman_error"):
            writer.add_scalar(key, record[key], iteration)
        torch.save(
            dict(state_dict=net.state_dict(), config=config.to_dict(), iteration=iteration, segments=buffer.segments),
            run_dir / f"checkpoint-{iteration:03d}.pt",
        )
        bar.set_postfix(loss=f"{record['loss']:.3g}", holdout=f"{record['holdout_bellman_error']:.3g}")
    bar.close()
    writer.close()
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return TrainResult(net, run_dir, history, buffer, problems, config)
