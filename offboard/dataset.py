"""Robot logs -> replay buffer arrays. Only segments that verify against their MANIFEST get in.

Each problem (a segment failing its sha256, one cut short or damaged, a segment of another task,
non-finite numbers) is one line in `problems`, and that segment's transitions never reach training; the
good segments beside it still do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onboard.recorder import SegmentError, read_manifest, read_segment, verified_segments
from onboard.tasks.base import Task


class DatasetError(ValueError):
    """Nothing usable to train on; the message says why and what to do."""


@dataclass
class ReplayBuffer:
    state: np.ndarray  # (N, n)
    obs: np.ndarray  # (N, d)
    action: np.ndarray  # (N, m)
    cost: np.ndarray  # (N,)
    next_state: np.ndarray  # (N, n)
    terminal: np.ndarray  # (N,) True only where the plant cannot continue (never on a time limit)
    segments: list[dict] = field(default_factory=list)  # {"segment", "sha256", "transitions"}

    def __len__(self) -> int:
        return len(self.cost)

    def window(self, size: int) -> ReplayBuffer:
        """The newest `size` transitions (0: all)."""
        if not size or size >= len(self):
            return self
        cut = slice(len(self) - size, None)
        return ReplayBuffer(
            self.state[cut], self.obs[cut], self.action[cut], self.cost[cut], self.next_state[cut],
            self.terminal[cut], self.segments,
        )  # fmt: skip


def load_replay_buffer(folders: list[Path], task: Task) -> tuple[ReplayBuffer, list[str]]:
    """All verified transitions of `task` under the robot log folders, and one line per problem found."""
    columns = {k: [] for k in ("state", "obs", "action", "cost", "next_state")}
    segments, problems = [], []
    for folder in folders:
        try:
            good, bad = verified_segments(folder)
            checked = {entry["segment"]: entry["sha256"] for entry in read_manifest(folder)}  # verified just now
        except SegmentError as e:
            problems.append(str(e))
            continue
        problems += bad
        for path in good:
            try:
                metadata, topics = read_segment(path)
            except SegmentError as e:  # its sha256 matches, but it was cut short before it was listed
                problems.append(f"{e}: left out")
                continue
            seg_task = metadata.get("segment", {}).get("task")
            if seg_task != task.name:
                problems.append(f"{path}: recorded for task {seg_task!r}, not {task.name!r}: left out")
                continue
            steps = topics["/transition"]
            if not steps:
                problems.append(f"{path}: no transitions: left out")
                continue
            try:
                arrays = {k: np.array([s[k] for s in steps], dtype=np.float64) for k in columns}
            except (KeyError, TypeError, ValueError):  # a field missing, ragged or not a number
                problems.append(
                    f"{path}: a transition's state, obs, action, cost or next_state is missing or not numbers: left out"
                )
                continue
            shapes_ok = (
                arrays["state"].shape[1:] == (task.state_dim,)
                and arrays["next_state"].shape[1:] == (task.state_dim,)
                and arrays["action"].shape[1:] == (task.act_dim,)
                and arrays["obs"].shape[1:] == (task.obs_dim,)
            )
            if not shapes_ok:
                problems.append(f"{path}: transitions do not have {task.name}'s dimensions: left out")
                continue
            if not all(np.all(np.isfinite(a)) for a in arrays.values()):
                problems.append(f"{path}: non-finite states, actions or costs: left out")
                continue
            for k in columns:
                columns[k].append(arrays[k])
            segments.append(dict(segment=str(path), sha256=checked[path.name], transitions=len(steps)))
    if not segments:
        where = ", ".join(str(f) for f in folders)
        if problems:  # the first problem names its own fix
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DatasetError(f"no usable {task.name} segments in {where}: {problems[0]}{more}")
        raise DatasetError(f"no usable {task.name} segments in {where}: record some with `make sim`")
    joined = {k: np.concatenate(v) for k, v in columns.items()}
    # Episodes end on a time limit: the plant could go on, so every transition bootstraps from s'.
    terminal = np.zeros(len(joined["cost"]), dtype=bool)
    return ReplayBuffer(**joined, terminal=terminal, segments=segments), problems
