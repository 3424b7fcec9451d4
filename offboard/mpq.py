"""Model Predictive Q-Learning (Bhardwaj et al., L4DC 2020), readable top to bottom. See docs/algorithm.md.

Q(s, a) is an MLP trained on real (here: stand-in) transitions with soft-Bellman targets
    y = c(s, a) + gamma * V_H(s'),
where V_H(s') is the free energy of H-step MPPI from s' (`onboard.mppi.free_energy` after n_iters
iterations, the BIASED planner model) with the CURRENT Q as its terminal value -- the very MPPI code
the robot runs (onboard.mppi), batched over the minibatch's next states. No target network (MPQ); the
soft-Q baseline is the same code with H = 1 and a target network; MPQ(lambda) is the same code with
td_lambda < 1 (the planner blends the returns along each rollout with Q). Episodes end on a time
limit, so every transition bootstraps. `update` is one step on one minibatch; `Trainer` keeps a run's
state (Q, Adam, target planners, held-out set, TensorBoard) across the rounds of collection and training.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from offboard.cli import refuse_unless
from offboard.dataset import DatasetError, ReplayBuffer, SegmentStore
from onboard.backends import cpu_backend_for
from onboard.fileio import new_run_dir
from onboard.mppi import MPPI, MPPIConfig
from onboard.tasks import get_task


@dataclass
class Config:
    """Every setting of a training run; the paper leaves N_update, K, M and the buffer to us (docs/algorithm.md).
    Also `python -m offboard train`'s options (offboard/cli.py), checked here for code and command line alike."""

    task: str = "pendulum"  # the task the robot's logs were recorded for
    data: tuple[str, ...] = ("data/sim",)  # robot log folders (verified MCAP segments)
    out: str = "runs/train"  # a run folder <out>/<time> gets the config, checkpoints and TensorBoard
    iterations: int = 5  # training iterations (a checkpoint each)
    updates_per_iteration: int = 100  # M minibatches per iteration
    batch_size: int = 64  # K transitions per minibatch
    buffer_window: int = 0  # train on the newest N transitions (0: all of them)
    hidden: tuple[int, ...] = (100, 100)  # paper: two hidden layers of 100 tanh units
    lr: float = 1e-3  # paper: Adam, 1e-3
    # H of the target MPPI; None: the one the task acts with (the pendulum: the paper's H=8), so the Q learns
    # the value of the planner that will use it. 1: soft Q.
    horizon: int | None = None
    target_iters: int | None = None  # MPPI iterations per target; None: the task's acting n_iters (the paper's 3)
    planner_model: Literal["biased", "mean", "true"] = "biased"  # the planner's model: the biased one when learning
    # MPQ(lambda)'s blend of returns in the target MPPI (1: the paper's MPQ). With td_lambda_final, lambda goes
    # linearly from td_lambda at the first iteration to td_lambda_final at the last: the model carries the
    # horizon while Q is poor, Q more and more as it improves.
    td_lambda: float = 1.0
    td_lambda_final: float | None = None  # MPQ(lambda): lambda at the last iteration (None: td_lambda throughout)
    target_network: bool = False  # MPQ: no; the soft-Q baseline: yes
    target_sync_every: int = 100  # updates between target-network copies (baseline only)
    holdout_fraction: float = 0.1  # transitions kept out of training to measure the Bellman error
    # the Bellman error is measured on at most this many of them (a seeded sample, the same before and after a
    # round), so its MPPI work stays bounded as the data grows: 7000 held-out ball-in-cup states cost 25 s a time
    holdout_measured: int = 256
    # the targets' MPPI backend: None is c where the task has a closed-form model, else mujoco
    backend: Literal["numpy", "c", "mujoco"] | None = None
    seed: int = 0  # seeds the minibatches, the held-out set, the network's initial weights and the targets' MPPI
    torch_threads: int | None = None  # torch's CPU threads; None: half this machine's CPUs
    target_threads: int | None = None  # the targets' MuJoCo threads (mujoco backend); None: every core
    # the targets on a Ray cluster (the cluster extra): auto (the one running on this machine) or its address
    # host:port; empty: in this process. Equal to this process's to float tolerance (offboard/target_workers.py)
    ray: str = ""
    target_workers: int = 2  # Ray workers for the targets (with --ray), each with one CPU

    def __post_init__(self):
        task = get_task(self.task)
        self.data = tuple(str(d) for d in self.data)
        self.hidden = tuple(self.hidden)
        self.torch_threads = default_torch_threads() if self.torch_threads is None else self.torch_threads
        acting = MPPIConfig.for_task(task)
        if self.backend is None:
            self.backend = cpu_backend_for(task)
        self.horizon = acting.H if self.horizon is None else self.horizon
        self.target_iters = acting.n_iters if self.target_iters is None else self.target_iters
        fraction = ("a number from 0 to 1 (1: the paper's MPQ)", lambda v: v is None or 0 <= v <= 1)
        at_least_1, at_least_0 = ("1 or more", lambda v: v >= 1), ("0 or more", lambda v: v >= 0)
        refuse_unless(
            self,
            iterations=at_least_1,
            updates_per_iteration=at_least_1,
            batch_size=at_least_1,
            buffer_window=("0 (all) or more", at_least_0[1]),
            hidden=("one or more layer widths of 1 or more", lambda v: len(v) > 0 and min(v) >= 1),
            lr=("a step size above 0 and at most 1 (the paper's: 1e-3)", lambda v: 0 < v <= 1),
            horizon=("1 or more (1: soft Q)", at_least_1[1]),
            target_iters=at_least_1,
            planner_model=("biased, mean or true", lambda v: v in ("biased", "mean", "true")),
            td_lambda=fraction,
            td_lambda_final=fraction,
            target_sync_every=at_least_1,
            holdout_fraction=("a fraction from 0 up to (not including) 1", lambda v: 0 <= v < 1),
            holdout_measured=at_least_1,
            # the Q being trained is a CPU torch net fed NumPy arrays
            backend=("c, numpy or mujoco (training targets run on the CPU)", lambda v: v in ("numpy", "c", "mujoco")),
            seed=at_least_0,
            torch_threads=at_least_1,
            target_threads=("1 or more (or unset: every core)", lambda v: v is None or v >= 1),
            target_workers=at_least_1,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_torch_threads() -> int:
    """Half the CPUs this process may use, at least 1. Torch's threads spin while they wait: with every core
    taken, one other busy process (the stand-in, a second learner) made a training step 30x slower."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


class QNetwork(nn.Module):
    """Q(obs, a): an MLP over the concatenated observation and action, tanh hidden units."""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(100, 100), value_scale: float = 1.0):
        """value_scale multiplies the output (the task's typical value, Task.value_scale): Adam moves each weight
        about lr per step, so a Q whose values run to hundreds would take thousands of updates just to reach
        them unscaled. It is part of the network (a buffer: saved, exported into the ONNX graph)."""
        super().__init__()
        self.register_buffer("value_scale", torch.tensor(float(value_scale)))
        layers, width = [], obs_dim + act_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.value_scale * self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class TorchQ:
    """The torch net as MPPI's terminal value: (obs, act) NumPy in, q NumPy out. MPPI cannot tell it
    from the ONNX Q the robot runs."""

    def __init__(self, net: QNetwork):
        self.net = net

    CHUNK = 2048  # rows per forward pass: a 2048 x 100 activation stays in cache (MPQ(lambda) runs 10^5 rows)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        obs, act = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32)
        q = torch.cat([self.net(o, a) for o, a in zip(obs.split(self.CHUNK), act.split(self.CHUNK), strict=True)])
        return q.numpy().astype(np.float64)


def target_planner(config: Config, task, q, td_lambda: float | None = None) -> MPPI:
    """The MPPI that computes V_H(s'): the task's paper settings, the config's H, iterations and lambda."""
    mppi = MPPIConfig.for_task(
        task,
        H=config.horizon,
        n_iters=config.target_iters,
        model=config.planner_model,
        td_lambda=config.td_lambda if td_lambda is None else td_lambda,
        seed=config.seed,
    )
    return MPPI(task, mppi, config.backend, q=q, threads=config.target_threads)


TARGET_CHUNK = 16  # next states per target plan, each chunk's noise from its own stream (free_energies)


def free_energies(planner: MPPI, states: np.ndarray, entropy: tuple[int, ...]) -> np.ndarray:
    """V_H(s) of each state: TARGET_CHUNK states per plan, chunk i's noise and model draws from the stream
    (*entropy, i). The values depend on the states, the Q and entropy alone, so targets whose chunks are
    planned on other processes (offboard/target_workers.py) equal these."""
    values = []
    for i, start in enumerate(range(0, len(states), TARGET_CHUNK)):
        planner.reseed((*entropy, i))
        values.append(np.asarray(planner.plan(states[start : start + TARGET_CHUNK]).value))
    return np.concatenate(values)


class LocalTargets:
    """V_H(s') from this process's target MPPI (its TorchQ reads the network as it is now)."""

    def __init__(self, planner: MPPI):
        self.planner, self.gamma = planner, planner.config.gamma

    def values(self, states: np.ndarray, entropy: tuple[int, ...]) -> np.ndarray:
        return free_energies(self.planner, states, entropy)

    def sync(self) -> None:
        """Nothing to send: the planner's Q is the trainer's network itself."""

    def close(self) -> None:
        """Nothing to stop."""


def soft_bellman_targets(targets, buffer: ReplayBuffer, idx: np.ndarray, entropy: tuple[int, ...]) -> np.ndarray:
    """y = c + gamma * V_H(s') (no bootstrap only where the plant truly terminated)."""
    value = targets.values(buffer.next_state[idx], entropy)
    return buffer.cost[idx] + targets.gamma * np.where(buffer.terminal[idx], 0.0, value)


def bellman_error(net: QNetwork, targets, buffer: ReplayBuffer, idx: np.ndarray, entropy: tuple[int, ...]) -> float:
    """Mean squared soft-Bellman residual on the given transitions."""
    y = soft_bellman_targets(targets, buffer, idx, entropy)
    with torch.no_grad():
        q = net(
            torch.as_tensor(buffer.obs[idx], dtype=torch.float32),
            torch.as_tensor(buffer.action[idx], dtype=torch.float32),
        )
    return float(np.mean((y - q.numpy()) ** 2))


def update(
    net: QNetwork, optimizer: torch.optim.Optimizer, targets, buffer: ReplayBuffer, idx, entropy: tuple[int, ...]
) -> dict:
    """Algorithm 1's update on one minibatch: MPPI targets with the targets' Q, squared error, one Adam step.
    entropy: the minibatch's noise streams (the seed and the update's number)."""
    y = torch.as_tensor(soft_bellman_targets(targets, buffer, idx, entropy), dtype=torch.float32)
    q = net(
        torch.as_tensor(buffer.obs[idx], dtype=torch.float32), torch.as_tensor(buffer.action[idx], dtype=torch.float32)
    )
    loss = torch.mean((y - q) ** 2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return dict(loss=loss.item(), mean_target=y.mean().item(), mean_q=q.mean().item())


class Trainer:
    """One training run. The Q, its optimiser, the target planners, the held-out set and the TensorBoard run
    live as long as the trainer, across any number of `load` + `train_iteration` rounds (the demo collects
    episodes between them); `load` reads only the segments that are new since the last round."""

    def __init__(self, config: Config, net: QNetwork | None = None, progress: bool = True, log=print):
        self.config, self.progress, self.log = config, progress, log
        torch.manual_seed(config.seed)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        self.task = task = get_task(config.task)
        self.store = SegmentStore([Path(d) for d in config.data], task, config.holdout_fraction, config.seed)
        self.buffer: ReplayBuffer | None = None
        self.problems: list[str] = []

        # Q, its optimiser, and the planners that compute targets with it.
        self.net = net or QNetwork(task.obs_dim, task.act_dim, config.hidden, task.value_scale)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.target_net = copy.deepcopy(self.net) if config.target_network else None
        self.td_lambda = config.td_lambda  # the lambda the Q was last trained for (MPQ(lambda); 1: MPQ)
        self.targets = None
        self.make_planners()

        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = new_run_dir(Path(config.out))
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.history: list[dict] = []
        self.updates = 0

    def make_planners(self) -> None:
        """The planners that compute targets (with the target network's Q, where there is one) and the held-out
        error (always the current Q), for the current lambda."""
        task, config = self.task, self.config
        targets_net = self.target_net or self.net
        if self.targets is not None:
            self.targets.close()
        if config.ray:
            from offboard.target_workers import RayTargets

            self.targets = RayTargets(config, targets_net, self.td_lambda, MPPIConfig.for_task(task).gamma)
        else:
            self.targets = LocalTargets(target_planner(config, task, TorchQ(targets_net), self.td_lambda))
        # the held-out error (twice a round) here, whatever computes the targets
        self.holdout_targets = LocalTargets(target_planner(config, task, TorchQ(self.net), self.td_lambda))

    def td_lambda_at(self, iteration: int) -> float:
        """MPQ(lambda)'s schedule: td_lambda at the first iteration, td_lambda_final at the last, linear between."""
        start, final = self.config.td_lambda, self.config.td_lambda_final
        if final is None:
            return start
        return start + (final - start) * (iteration - 1) / max(1, self.config.iterations - 1)

    def load(self) -> list[str]:
        """Bring in the verified segments that are new since the last call; one line per problem found."""
        problems = self.store.refresh()
        if not self.store.loaded:  # the error names the first problem: the others are said before it
            for problem in problems[1:]:
                self.log(f"left out: {problem}")
            raise self.store.no_data_error(problems)
        for problem in problems:
            self.log(f"left out: {problem}")
        self.buffer = self.store.buffer().window(self.config.buffer_window)
        self.train_idx = np.flatnonzero(~self.buffer.holdout)
        self.holdout_idx = np.flatnonzero(self.buffer.holdout)
        if len(self.holdout_idx) > self.config.holdout_measured:  # a seeded sample, redrawn as the data grows
            draw = np.random.default_rng([self.config.seed, len(self.buffer)])
            self.holdout_idx = np.sort(draw.choice(self.holdout_idx, self.config.holdout_measured, replace=False))
        if len(self.train_idx) == 0:
            raise DatasetError(f"only {len(self.buffer)} transitions, all held out: record more episodes")
        self.problems = problems
        return problems

    def holdout_error(self) -> float:
        if len(self.holdout_idx) == 0:  # a window that cut the held-out transitions off: nothing to measure on
            return float("nan")
        self.holdout_targets.sync()
        entropy = (self.config.seed, 1, len(self.history) + 1)  # one round's before and after: the same draws
        return bellman_error(self.net, self.holdout_targets, self.buffer, self.holdout_idx, entropy)

    def train_iteration(self) -> dict:
        """M minibatches of K transitions (never held-out ones), a checkpoint, a line in TensorBoard."""
        config = self.config
        if self.buffer is None:
            self.load()
        from tqdm import tqdm

        iteration = len(self.history) + 1
        if self.td_lambda_at(iteration) != self.td_lambda:
            self.td_lambda = self.td_lambda_at(iteration)
            self.make_planners()
        before = self.holdout_error()
        metrics = []
        # The bar on a terminal only (disable=None): piped into a log it was thousands of \r updates; the
        # iteration's line (train) says what it did.
        for _ in tqdm(
            range(config.updates_per_iteration),
            disable=None if self.progress else True,
            desc=f"MPQ {iteration}",
            unit="update",
        ):
            idx = self.rng.choice(self.train_idx, size=min(config.batch_size, len(self.train_idx)), replace=False)
            self.targets.sync()  # a worker's copy of the Q the targets use, where it changed
            entropy = (config.seed, 0, self.updates)
            metrics.append(update(self.net, self.optimizer, self.targets, self.buffer, idx, entropy))
            self.updates += 1
            if self.target_net is not None and self.updates % config.target_sync_every == 0:
                self.target_net.load_state_dict(self.net.state_dict())
        record = dict(
            iteration=iteration,
            updates=self.updates,
            transitions=len(self.buffer),
            held_out=int(self.buffer.holdout.sum()),
            td_lambda=self.td_lambda,
            **{key: float(np.mean([m[key] for m in metrics])) for key in metrics[0]},
            holdout_bellman_error_before=before,
            holdout_bellman_error=self.holdout_error(),
        )
        self.history.append(record)
        self.scalars(iteration, {k: v for k, v in record.items() if k != "iteration"})
        torch.save(
            dict(
                state_dict=self.net.state_dict(),
                optimizer=self.optimizer.state_dict(),
                config=config.to_dict(),
                iteration=iteration,
                segments=self.buffer.segments,
                # what `restore` needs to go on as if never stopped
                target_state_dict=None if self.target_net is None else self.target_net.state_dict(),
                rng=self.rng.bit_generator.state,
                updates=self.updates,
                history=self.history,
                td_lambda=self.td_lambda,
            ),
            self.checkpoint_path(iteration),
        )
        (self.run_dir / "history.json").write_text(json.dumps(self.history, indent=2) + "\n")
        return record

    def checkpoint_path(self, iteration: int) -> Path:
        return self.run_dir / f"checkpoint-{iteration:03d}.pt"

    def restore(self, checkpoint: Path) -> None:
        """The run as it stood at a checkpoint of its own (a stopped demo going on): the Q, Adam's moments, the
        target network, the minibatches' stream, the update count, the history and lambda. Its next round then
        trains as the stopped run's would have."""
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.target_net is not None:
            self.target_net.load_state_dict(state["target_state_dict"])
        self.rng.bit_generator.state = state["rng"]
        self.updates, self.history = state["updates"], list(state["history"])
        if state["td_lambda"] != self.td_lambda:
            self.td_lambda = state["td_lambda"]
            self.make_planners()

    def trained_config(self) -> dict:
        """The settings as the Q now stands (for q.json): lambda is the one it was last trained for."""
        return {**self.config.to_dict(), "td_lambda": self.td_lambda}

    def scalars(self, step: int, values: dict) -> None:
        """Numbers into this run's TensorBoard (the demo adds its evaluation costs here too)."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.targets.close()  # Ray's workers, where the targets ran on them


@dataclass
class TrainResult:
    net: QNetwork
    run_dir: Path
    history: list[dict]
    buffer: ReplayBuffer
    problems: list[str]
    config: Config
    trained_config: dict  # config as the Q stands (its lambda): what export_extra records


def train(config: Config, net: QNetwork | None = None, progress: bool = True, log=print) -> TrainResult:
    """`config.iterations` rounds on the data as it is now (`python -m offboard train`)."""
    out_existed = Path(config.out).exists()
    trainer, loaded = Trainer(config, net, progress, log), False
    try:
        trainer.load()
        loaded = True
        for _ in range(config.iterations):
            record = trainer.train_iteration()
            if progress:
                log(
                    f"iteration {record['iteration']}: loss {record['loss']:.3g}, "
                    f"held-out Bellman error {record['holdout_bellman_error']:.3g}"
                )
    finally:
        trainer.close()
        if not loaded:  # nothing to train on: no run folder left behind that looks like a run
            shutil.rmtree(trainer.run_dir, ignore_errors=True)
            if not out_existed:  # nor the --out folder made for it (left empty now)
                with contextlib.suppress(OSError):
                    Path(config.out).rmdir()
    return TrainResult(
        trainer.net,
        trainer.run_dir,
        trainer.history,
        trainer.buffer,
        trainer.problems,
        config,
        trainer.trained_config(),
    )
