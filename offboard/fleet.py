"""Fleet collection on Ray (`--ray auto|ADDRESS`): episodes through several stand-ins at once.

Each collector is a Ray actor: an onboard loop with its own stand-in (and, for domain randomisation, its own plant
drawn per episode, as every stand-in draws it), recording verified segments into its own log folder on its
machine. The driver gives each collector the ids of the episodes it runs; an episode's start and noise are seeded by
its id (onboard.loop), so the fleet's episodes are the very ones one process would run. Each closed segment comes
back as bytes the moment it closes, with its MANIFEST line; the driver checks its sha256 and lists it in the
robot's folder as pull-data does (offboard.pull_data.write_manifest). A collector that dies mid-episode loses that
episode only: the ids it had not sent run again on a new collector; nothing is listed twice, and nothing
unverified is listed (the dead collector's .partial stays in its own folder, never imported).
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from offboard.evaluate import Interrupted, Outcomes, episode_outcomes, sim_profile
from offboard.pull_data import write_manifest
from offboard.target_workers import connect
from onboard.fileio import write_atomic
from onboard.loop import open_loop
from onboard.recorder import next_episode_id, read_manifest
from onboard.tasks import get_task


class Collector:
    """A Ray actor: the onboard loop and its stand-in on one of the cluster's CPUs, logging into its own folder."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mpq-collector-"))
        self.calls = 0

    def folder(self) -> str:
        return str(self.root)

    def collect(self, name: str, task: str, ids: list[int], seed: int, q: dict | None, mppi: dict, options: dict):
        """Run the episodes `ids` (a Ray generator: each closed segment yielded as it closes, with its MANIFEST
        line). q: the Q's files as bytes ({"q.onnx", "q.json"}; None: plain MPPI); the driver's disk is not
        this machine's."""
        model = ""
        if q is not None:
            where = self.root / "models" / hashlib.sha256(q["q.onnx"]).hexdigest()[:16]
            where.mkdir(parents=True, exist_ok=True)
            for file, data in q.items():
                (where / file).write_bytes(data)
            model = str(where / "q.onnx")
        self.calls += 1
        log_dir = self.root / f"call{self.calls:04d}"  # a folder per call: every episode id is new to it
        profile = sim_profile(log_dir, name, task, seed, model, mppi, **options)
        folder = log_dir / name
        with open_loop(profile, show_status=False) as loop:
            for episode in ids:
                loop.run(1, lambda: False, [episode])
                segment = f"{episode:06d}.mcap"
                (entry,) = [e for e in read_manifest(folder) if e["segment"] == segment]
                yield dict(episode=episode, entry=entry, data=(folder / segment).read_bytes())


class Fleet:
    """`size` collectors on the Ray cluster at `address`, with offboard.evaluate.run_episodes' contract."""

    def __init__(self, address: str, size: int):
        self.ray = connect(address)
        self.collector = self.ray.remote(num_cpus=1)(Collector)
        self.collectors = [self.collector.remote() for _ in range(size)]
        self.lock = threading.Lock()
        self.reruns = 0  # episodes run again after their collector died

    def run_episodes(
        self,
        log_dir: Path,
        name: str,
        task: str,
        episodes: int,
        seed: int,
        q: str,
        mppi: dict,
        stop=None,
        starts: str = "uniform",
        mass_scale: dict | None = None,
        randomise: bool = False,
        on_listed=None,
    ) -> Outcomes:
        """`episodes` more episodes logged under log_dir/name, their ids going on from the folder's last, run by
        the collectors at once; their outcomes. on_listed(collector, episode): called as each segment is listed."""
        folder = Path(log_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        listed = {entry["segment"]: entry for entry in read_manifest(folder)}
        before = set(listed)
        first = next_episode_id(folder)
        todo = list(range(first, first + episodes))
        files = None if not q else {"q.onnx": Path(q).read_bytes(), "q.json": Path(q).with_suffix(".json").read_bytes()}
        options = dict(starts=starts, mass_scale=dict(mass_scale or {}), randomise=randomise)
        job = (name, task, seed, files, mppi, options)
        while todo:  # each round: the ids not yet listed, shared by the collectors alive
            shares = [todo[i :: len(self.collectors)] for i in range(len(self.collectors))]
            with ThreadPoolExecutor(len(self.collectors)) as pool:
                rounds = [
                    pool.submit(self._collect, i, ids, job, folder, listed, stop, on_listed)
                    for i, ids in enumerate(shares)
                    if ids
                ]
            todo = sorted(episode for r in rounds for episode in r.result())
            self.reruns += len(todo)
            if stop is not None and stop():
                raise Interrupted
        return episode_outcomes(folder, get_task(task), skip=before)

    def _collect(self, i: int, ids: list[int], job: tuple, folder: Path, listed: dict, stop, on_listed) -> list[int]:
        """Collector i's episodes, each listed as it arrives; the ids it did not send (it died: replaced)."""
        name, task, seed, files, mppi, options = job
        left = list(ids)
        try:
            for ref in self.collectors[i].collect.remote(name, task, ids, seed, files, mppi, options):
                segment = self.ray.get(ref)
                self._list(folder, listed, segment)
                left.remove(segment["episode"])
                if on_listed is not None:
                    on_listed(self.collectors[i], segment["episode"])
                if stop is not None and stop():  # the collector ends mid-episode: its .partial is never listed
                    self.ray.kill(self.collectors[i])
                    self.collectors[i] = self.collector.remote()
                    break
        except self.ray.exceptions.RayActorError:
            self.collectors[i] = self.collector.remote()  # a new collector in its place, for the ids left
        return left

    def _list(self, folder: Path, listed: dict, segment: dict) -> None:
        """A segment that arrived whole into the folder and its MANIFEST, as pull-data lists one."""
        entry, data = segment["entry"], segment["data"]
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise RuntimeError(f"{entry['segment']} arrived damaged (its sha256 does not match its MANIFEST line)")
        with self.lock:
            if entry["segment"] in listed:  # never listed twice: the id was handed out once
                raise RuntimeError(f"{folder / entry['segment']} is listed already: two runs into one folder?")
            write_atomic(folder / entry["segment"], data)
            listed[entry["segment"]] = entry
            write_manifest(folder, listed)

    def close(self) -> None:
        for collector in self.collectors:
            self.ray.kill(collector)
        self.collectors = []
