"""Robot logs -> replay buffer arrays. Only segments that verify against their MANIFEST get in.

Each problem (a segment failing its sha256, one cut short or damaged, a segment of another task,
non-finite numbers) is one line in `problems`, and that segment's transitions never reach training; the
good segments beside it still do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onboard.recorder import (
    SegmentError,
    listed_segment_problem,
    read_manifest,
    read_segment,
    unlisted_segment_problems,
)
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
    holdout: np.ndarray | None = None  # (N,) True: kept out of training for good, to measure the Bellman error

    def __len__(self) -> int:
        return len(self.cost)

    def window(self, size: int) -> ReplayBuffer:
        """The newest `size` transitions (0: all)."""
        if not size or size >= len(self):
            return self
        cut = slice(len(self) - size, None)
        return ReplayBuffer(
            self.state[cut],
            self.obs[cut],
            self.action[cut],
            self.cost[cut],
            self.next_state[cut],
            self.terminal[cut],
            self.segments,
            None if self.holdout is None else self.holdout[cut],
        )


COLUMNS = ("state", "obs", "action", "cost", "next_state")


@dataclass
class LoadedSegment:
    path: Path
    sha256: str
    stat: tuple[int, int]  # (size, mtime_ns) when it was hashed: unchanged means no need to hash it again
    arrays: dict[str, np.ndarray]
    holdout: np.ndarray  # (transitions,) bool, drawn once from the seed and the segment's name
    robot: str | None = None  # what recorded it (its metadata): the robot, and the sha256 of the Q it acted with
    model_sha256: str | None = None


class SegmentStore:
    """The verified segments of one task under some robot log folders, each read once.

    `refresh()` reads only what is new since the last call: a training run that lives across collection
    rounds does not re-read or re-hash its whole history. A listed segment whose size or mtime changed
    is hashed again, and one that no longer matches its MANIFEST leaves the buffer with a problem line.
    Each transition is assigned to the held-out set once, by the seed and its segment's name (robot
    folder and file: not its sha256, which changes with the start time it records), so the held-out set
    never changes, never reaches training, whatever order segments arrive in, and is the same when the
    same run is made again."""

    def __init__(self, folders: list[Path], task: Task, holdout_fraction: float = 0.0, seed: int = 0):
        self.folders = [Path(f) for f in folders]
        self.task = task
        self.holdout_fraction = holdout_fraction
        self.seed = seed
        self.loaded: dict[Path, LoadedSegment] = {}
        self.reads = 0  # segments read from disk so far (the incremental loading's own check)

    def refresh(self) -> list[str]:
        """Read new verified segments, drop changed ones; one line per problem found now."""
        problems, listed = [], set()
        for folder in self.folders:
            try:
                entries = read_manifest(folder)
            except SegmentError as e:
                problems.append(str(e))
                self._forget(lambda path, folder=folder: path.parent == folder)
                continue
            unlisted = unlisted_segment_problems(folder, {entry["segment"] for entry in entries})
            if not entries and not unlisted:
                problems.append(f"{folder}: no segments in it (record some with `make sim`, or leave it out of --data)")
            for entry in sorted(entries, key=lambda e: e["segment"]):
                path = folder / entry["segment"]
                listed.add(path)
                problem = self._load(path, entry["sha256"])
                if problem is not None:
                    problems.append(problem)
                    self.loaded.pop(path, None)
            problems += unlisted
        self._forget(lambda path: path not in listed)
        return problems

    def _forget(self, which) -> None:
        for path in [p for p in self.loaded if which(p)]:
            del self.loaded[path]

    def _load(self, path: Path, sha256: str) -> str | None:
        """None when the segment is in the store (already, or read now); else the problem."""
        info = path.stat() if path.exists() else None
        stat = None if info is None else (info.st_size, info.st_mtime_ns)
        known = self.loaded.get(path)
        if known is not None and known.sha256 == sha256 and known.stat == stat:
            return None
        problem = listed_segment_problem(path, sha256)
        if problem is not None:
            return problem
        if known is not None and known.sha256 == sha256:  # touched, not changed
            known.stat = stat
            return None
        self.reads += 1
        try:
            metadata, topics = read_segment(path)
        except SegmentError as e:  # its sha256 matches, but it was cut short before it was listed
            return str(e)
        task = self.task
        seg_task = metadata.get("segment", {}).get("task")
        if seg_task != task.name:
            return f"{path}: recorded for task {seg_task!r}, not {task.name!r} (--task {seg_task} trains on it)"
        steps = topics["/transition"]
        if not steps:
            return f"{path}: no transitions"
        try:
            arrays = {k: np.array([s[k] for s in steps], dtype=np.float64) for k in COLUMNS}
        except (KeyError, TypeError, ValueError):  # a field missing, ragged or not a number
            return f"{path}: a transition's state, obs, action, cost or next_state is missing or not numbers"
        sizes = dict(state=task.state_dim, next_state=task.state_dim, action=task.act_dim, obs=task.obs_dim)
        wrong = [
            f"{k} of {'x'.join(map(str, arrays[k].shape[1:])) or 'no'} values (the task's: {n})"
            for k, n in sizes.items()
            if arrays[k].shape[1:] != (n,)
        ]
        if wrong:  # recorded before the task's MJCF or module changed
            return f"{path}: its transitions have {', '.join(wrong)}: record again with the task as it is"
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            return f"{path}: non-finite states, actions or costs"
        name = hashlib.sha256(f"{path.parent.name}/{path.name}".encode()).hexdigest()
        draw = np.random.default_rng([self.seed, int(name[:15], 16)])
        holdout = draw.random(len(steps)) < self.holdout_fraction
        recorded = metadata.get("segment", {})
        robot, model = recorded.get("robot"), recorded.get("model_sha256")
        self.loaded[path] = LoadedSegment(path, sha256, stat, arrays, holdout, robot, model)
        return None

    def buffer(self) -> ReplayBuffer:
        """Every loaded transition, folder by folder in the order given, segments by name (oldest first)."""
        order = {folder: i for i, folder in enumerate(self.folders)}
        segments = sorted(self.loaded.values(), key=lambda s: (order[s.path.parent], s.path.name))
        if not segments:
            return ReplayBuffer(*(np.zeros((0,)) for _ in range(6)), segments=[], holdout=np.zeros(0, dtype=bool))
        joined = {k: np.concatenate([s.arrays[k] for s in segments]) for k in COLUMNS}
        holdout = np.concatenate([s.holdout for s in segments])
        if self.holdout_fraction > 0 and not holdout.any():  # at least one, to measure with: the newest
            holdout[-1] = True
        # Episodes end on a time limit: the plant could go on, so every transition bootstraps from s'.
        terminal = np.zeros(len(joined["cost"]), dtype=bool)
        listing = [
            dict(
                segment=str(s.path),
                sha256=s.sha256,
                transitions=len(s.holdout),
                robot=s.robot,
                model_sha256=s.model_sha256,
            )
            for s in segments
        ]
        return ReplayBuffer(**joined, terminal=terminal, segments=listing, holdout=holdout)

    def no_data_error(self, problems: list[str]) -> DatasetError:
        where = ", ".join(str(f) for f in self.folders)
        name = self.task.name
        if problems:  # the first problem names its own fix
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            return DatasetError(f"no usable {name} segments in {where}: {problems[0]}{more}")
        return DatasetError(f"no usable {name} segments in {where}: record some with `make sim`")


def load_replay_buffer(folders: list[Path], task: Task) -> tuple[ReplayBuffer, list[str]]:
    """All verified transitions of `task` under the robot log folders, and one line per problem found."""
    store = SegmentStore(folders, task)
    problems = store.refresh()
    if not store.loaded:
        raise store.no_data_error(problems)
    return store.buffer(), problems
