"""A training run that lives across collection rounds (the demo's): one optimiser, a held-out set fixed once and
never trained on, only new segments read, a changed one caught, one TensorBoard run, run folders that never
collide."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import offboard.mpq
from offboard.dataset import SegmentStore
from offboard.mpq import Config, Trainer, default_torch_threads
from onboard.fileio import new_run_dir
from onboard.recorder import Recorder
from onboard.tasks import get_task

PENDULUM = get_task("pendulum")


def write_segment(folder: Path, episode: int, steps: int = 40) -> Path:
    """A closed pendulum segment of random (but well-formed) transitions, listed in MANIFEST."""
    rng = np.random.default_rng(episode)
    recorder = Recorder(folder.parent, folder.name)
    recorder.start_episode(episode, dict(task="pendulum", robot=folder.name))
    for t in range(steps):
        state = np.array([0.05 * t, *rng.uniform(-3, 3, 2)])
        step = dict(
            t=t,
            state=state.tolist(),
            obs=PENDULUM.obs(state).tolist(),
            action=[float(rng.uniform(-2, 2))],
            cost=float(PENDULUM.cost(state, 0)),
            next_state=(state + 0.01).tolist(),
            done=False,
        )
        recorder.write("/transition", step)
    segment = recorder.end_episode()
    recorder.close()
    return segment


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """A small trainer whose minibatches are recorded (the indices every update trained on)."""
    seen = []
    real_update = offboard.mpq.update

    def recording_update(net, optimizer, targets, buffer, idx, entropy):
        seen.append(buffer.state[idx].copy())
        return real_update(net, optimizer, targets, buffer, idx, entropy)

    monkeypatch.setattr(offboard.mpq, "update", recording_update)
    config = Config(
        data=(str(tmp_path / "robot"),),
        out=str(tmp_path / "runs"),
        updates_per_iteration=15,
        batch_size=16,
        holdout_fraction=0.2,
        torch_threads=1,
    )
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.seen = seen
    yield trainer
    trainer.close()


def held_out_states(trainer) -> set:
    return {tuple(s) for s in trainer.buffer.state[trainer.buffer.holdout]}


def test_rounds_keep_one_optimiser_and_a_held_out_set_that_is_never_trained_on(trainer, tmp_path):
    folder = tmp_path / "robot"
    for episode in (1, 2):
        write_segment(folder, episode)
    trainer.load()
    first_holdout = held_out_states(trainer)
    trainer.train_iteration()
    optimizer = trainer.optimizer
    for episode in (3, 4):
        write_segment(folder, episode)
    trainer.load()
    trainer.train_iteration()

    assert trainer.optimizer is optimizer  # Adam's moments go on; its step count is every update so far
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {30} and trainer.updates == 30
    assert len(trainer.buffer) == 160 and first_holdout <= held_out_states(trainer)  # fixed once, then grown
    trained = {tuple(s) for batch in trainer.seen for s in batch}
    assert trained and not trained & held_out_states(trainer)
    history = json.loads((trainer.run_dir / "history.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2] and history[1]["held_out"] == trainer.buffer.holdout.sum()
    assert len(list((trainer.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_the_held_out_error_is_measured_on_a_bounded_sample_of_the_held_out_set(tmp_path, monkeypatch):
    """As the data grows, the held-out Bellman error's MPPI work stays at holdout_measured states: a seeded sample
    of held-out transitions only, the same before and after a round."""
    measured = []
    real_error = offboard.mpq.bellman_error

    def recording_error(net, targets, buffer, idx, entropy):
        measured.append(buffer.state[idx].copy())
        return real_error(net, targets, buffer, idx, entropy)

    monkeypatch.setattr(offboard.mpq, "bellman_error", recording_error)
    folder = tmp_path / "robot"
    for episode in (1, 2, 3):
        write_segment(folder, episode)
    config = Config(
        data=(str(folder),),
        out=str(tmp_path / "runs"),
        updates_per_iteration=2,
        batch_size=8,
        holdout_fraction=0.5,
        holdout_measured=10,
        torch_threads=1,
    )
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    trainer.load()
    record = trainer.train_iteration()
    trainer.close()

    assert record["held_out"] > 10 == len(measured[0])  # more held out than measured
    assert np.array_equal(measured[0], measured[1])  # before and after the round: the same states
    assert {tuple(s) for s in measured[0]} <= held_out_states(trainer)


def test_only_new_segments_are_read_and_a_changed_one_leaves_with_a_problem(tmp_path):
    folder = tmp_path / "robot"
    first = write_segment(folder, 1)
    write_segment(folder, 2)
    store = SegmentStore([folder], PENDULUM, holdout_fraction=0.1)
    assert store.refresh() == [] and store.reads == 2
    write_segment(folder, 3)
    assert store.refresh() == [] and store.reads == 3  # the two already read were not read again
    holdout = store.buffer().holdout.copy()

    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    (problem,) = store.refresh()
    assert str(first) in problem and "sha256 does not match MANIFEST" in problem
    buffer = store.buffer()
    assert [Path(s["segment"]).name for s in buffer.segments] == ["000002.mcap", "000003.mcap"]
    assert np.array_equal(buffer.holdout, holdout[40:])  # the others keep their held-out transitions


def test_the_held_out_draw_is_the_same_for_the_same_run_made_again_in_any_order(tmp_path):
    """A rerun records the same episodes with other start times (other sha256s): the same held-out set."""
    first, again = tmp_path / "first" / "robot", tmp_path / "again" / "robot"
    for episode in (1, 2, 3):
        write_segment(first, episode, steps=200)
    for episode in (3, 1, 2):  # the same episodes, recorded later and in another order
        write_segment(again, episode, steps=200)
    assert (first / "000001.mcap").read_bytes() != (again / "000001.mcap").read_bytes()
    one = SegmentStore([first], PENDULUM, holdout_fraction=0.1, seed=7)
    one.refresh()
    other = SegmentStore([again], PENDULUM, holdout_fraction=0.1, seed=7)
    other.refresh()
    assert np.array_equal(one.buffer().holdout, other.buffer().holdout)
    assert 0.05 < one.buffer().holdout.mean() < 0.15
    another_seed = SegmentStore([first], PENDULUM, holdout_fraction=0.1, seed=8)
    another_seed.refresh()
    assert not np.array_equal(one.buffer().holdout, another_seed.buffer().holdout)


def test_run_folders_started_in_the_same_second_never_collide(tmp_path):
    folders = [new_run_dir(tmp_path) for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() for f in folders)


@pytest.mark.parametrize("cpus, threads", [(8, 4), (2, 1), (1, 1)])
def test_torch_threads_leave_half_the_machine_free(monkeypatch, cpus, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))  # the CPUs this process may use
    assert default_torch_threads() == threads and Config().torch_threads == threads
