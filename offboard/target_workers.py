"""The trainer's soft-Bellman targets on Ray workers (`--ray auto|ADDRESS`; Ray is the `cluster` extra).

Each worker is a Ray actor holding the task's target MPPI and its own copy of the Q. The trainer sends the Q's
weights when they changed (before each update for MPQ, after each copy for soft-Q's target network) and splits a
minibatch's next states over the workers in chunks of offboard.mpq.TARGET_CHUNK. A chunk's noise and model draws
come from its own stream (offboard.mpq.free_energies), so the targets equal the single-process trainer's to float
tolerance whatever the number of workers. Ray, not a home-made pool: the same code reaches a cluster's machines
by its address, and RLlib and Tune users already run one.
"""

from __future__ import annotations

import numpy as np
import torch


def require_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install -e '.[cluster]' (the cluster extra), then try again") from None
    return ray


def address_problem(address: str) -> str | None:
    """What is wrong with a --ray address, found before Ray is asked (None: nothing; empty is no address)."""
    if address in ("", "auto"):
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"--ray {address}: give auto (the cluster on this machine) or its address host:port, e.g. 10.0.0.5:6379"


def connect(address: str | None):
    """Ray, connected to the cluster at `address` ("auto": the one running on this machine; None: one started for
    this process) once per process: a process already connected stays on its cluster (the bench starts its own and
    passes its address). A malformed address is refused either way."""
    ray = require_ray()
    if address and (problem := address_problem(address)):
        raise ValueError(problem)
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except ConnectionError as e:
            raise ValueError(
                f"--ray {address}: no Ray cluster answers there ({e}); start one with `ray start --head`, give its "
                "address, or run with the RAY_AUTH_MODE it was started with (README: a Ray cluster)"
            ) from None
    return ray


class TargetWorker:
    """A Ray actor: the target MPPI with its own Q (one torch and one MuJoCo thread, as many as Ray gave it)."""

    def __init__(self, config: dict, td_lambda: float):
        from offboard.mpq import Config, QNetwork, TorchQ, target_planner
        from onboard.tasks import get_task

        torch.set_num_threads(1)
        config = Config(**{**config, "target_threads": 1, "torch_threads": 1})
        task = get_task(config.task)
        self.net = QNetwork(task.obs_dim, task.act_dim, config.hidden, task.value_scale)
        self.planner = target_planner(config, task, TorchQ(self.net), td_lambda)

    def set_weights(self, state_dict: dict) -> None:
        self.net.load_state_dict(state_dict)

    def values(self, chunks: list[tuple[np.ndarray, tuple[int, ...]]]) -> list[np.ndarray]:
        """V_H of each chunk of states, each from its own noise stream (as offboard.mpq.free_energies)."""
        out = []
        for states, entropy in chunks:
            self.planner.reseed(entropy)
            out.append(np.asarray(self.planner.plan(states).value))
        return out


class RayTargets:
    """V_H(s') computed on `workers` Ray actors; the same two calls as offboard.mpq.LocalTargets."""

    def __init__(self, config, net: torch.nn.Module, td_lambda: float, gamma: float):
        self.ray = connect(config.ray)
        actor = self.ray.remote(num_cpus=1)(TargetWorker)
        self.workers = [actor.remote(config.to_dict(), td_lambda) for _ in range(config.target_workers)]
        self.net, self.gamma, self.sent = net, gamma, None

    def sync(self) -> None:
        """The Q's weights to every worker, if they changed since they were last sent (an actor runs its calls in
        the order they were made: the next values see them)."""
        state = {name: tensor.detach().clone() for name, tensor in self.net.state_dict().items()}
        if self.sent is not None and all(torch.equal(state[name], self.sent[name]) for name in state):
            return
        weights = self.ray.put(state)
        for worker in self.workers:
            worker.set_weights.remote(weights)
        self.sent = state

    def values(self, states: np.ndarray, entropy: tuple[int, ...]) -> np.ndarray:
        from offboard.mpq import TARGET_CHUNK

        starts = range(0, len(states), TARGET_CHUNK)
        chunks = [(states[start : start + TARGET_CHUNK], (*entropy, i)) for i, start in enumerate(starts)]
        n = len(self.workers)
        shares = [chunks[j::n] for j in range(n)]  # chunk i to worker i mod n
        answers = self.ray.get([w.values.remote(share) for w, share in zip(self.workers, shares, strict=True)])
        ordered = [answers[i % n][i // n] for i in range(len(chunks))]
        return np.concatenate(ordered)

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []
