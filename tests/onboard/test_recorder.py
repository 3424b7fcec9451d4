"""The recorder's start after a crash or a power cut: what it lists, quarantines and repairs, never loses."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcap.reader import make_reader

from onboard.recorder import (
    CHANNELS,
    FolderInUse,
    Recorder,
    SegmentError,
    append_manifest,
    iter_transitions,
    read_manifest,
    read_segment,
    verified_segments,
)

ROOT = Path(__file__).resolve().parents[2]


def write_segment(folder: Path, episode: int, steps: int = 20) -> Path:
    """A closed pendulum segment of `steps` transitions, listed in MANIFEST, as the loop leaves one."""
    recorder = Recorder(folder.parent, folder.name)
    recorder.start_episode(episode, dict(task="pendulum", robot=folder.name))
    for t in range(steps):
        transition = dict(t=t, state=[0.1, 0.2], obs=[1.0, 0.0, 0.2], action=[0.5], cost=1.0, next_state=[0.1, 0.2])
        recorder.write("/transition", dict(transition, done=t == steps - 1))
    segment = recorder.end_episode()
    recorder.close()
    return segment


def cut(segment: Path, keep: int) -> bytes:
    """Keep the first `keep` bytes of a segment, as a crash mid-copy or a bad disk does; returns them."""
    data = segment.read_bytes()[:keep]
    segment.write_bytes(data)
    return data


def onboard_run(log_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onboard", "run", "--episodes", "1", "--quiet", "--log-dir", str(log_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("keep", [0.5, -9, -1])  # mid-messages, the footer's magic gone, its last byte gone
def test_an_unlisted_segment_cut_short_is_quarantined_at_start_not_listed(tmp_path, keep):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    second = write_segment(folder, 2)
    size = second.stat().st_size
    data = cut(second, int(size * keep) if keep > 0 else size + keep)
    (folder / "MANIFEST").write_text((folder / "MANIFEST").read_text().splitlines(keepends=True)[0])

    recorder = Recorder(tmp_path, "robot")
    assert recorder.recovered == []
    assert [e["segment"] for e in read_manifest(folder)] == ["000001.mcap"]
    assert (folder / "quarantine" / "000002.mcap").read_bytes() == data  # kept as it was, never deleted
    good, problems = verified_segments(folder)
    assert [p.name for p in good] == ["000001.mcap"] and problems == []
    assert recorder.next_episode == 3  # the quarantined name is not used again


def test_a_second_quarantined_file_of_the_same_name_never_overwrites_the_first(tmp_path):
    folder = tmp_path / "robot"
    first = cut(write_segment(folder, 1), 100)
    (folder / "MANIFEST").unlink()
    Recorder(tmp_path, "robot")
    second = cut(write_segment(folder, 1), 200)
    (folder / "MANIFEST").unlink()
    Recorder(tmp_path, "robot")
    assert (folder / "quarantine" / "000001.mcap").read_bytes() == first
    assert (folder / "quarantine" / "000001.mcap.2").read_bytes() == second


def test_a_listed_segment_cut_short_is_one_segment_error_not_a_crash(tmp_path):
    """A segment cut short and listed with its own sha256 (by an older recorder) verifies, but cannot be read."""
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    second = write_segment(folder, 2)
    (folder / "MANIFEST").write_text((folder / "MANIFEST").read_text().splitlines(keepends=True)[0])
    cut(second, second.stat().st_size // 2)
    append_manifest(folder, second, recovered=True)

    with pytest.raises(SegmentError, match=r"000002\.mcap: not a complete segment \(cut short or damaged: \w"):
        read_segment(second)  # and the reason is named (an exception without a message: its type)
    assert len(read_segment(folder / "000001.mcap")[1]["/transition"]) == 20
    (tmp_path / "empty.mcap").write_bytes(b"")
    with pytest.raises(SegmentError, match=r"empty\.mcap: not a complete segment \(cut short or damaged: \w"):
        read_segment(tmp_path / "empty.mcap")
    with pytest.raises(SegmentError, match=r"000002\.mcap: not a complete segment"):
        list(iter_transitions(folder))


NOT_ENTRIES = [
    "1",
    '{"sha256": "x"}',
    "[]",
    "null",
    '"000001.mcap"',
    '{"segment": 1, "sha256": "x"}',
    '{"segment": "../other/000001.mcap", "sha256": "x"}',
    "{not json",
]


@pytest.mark.parametrize("line", NOT_ENTRIES)
def test_a_manifest_line_that_is_not_a_segment_entry_is_one_line_naming_it_and_the_fix(tmp_path, line):
    folder = tmp_path / "sim"
    write_segment(folder, 1)
    write_segment(folder, 2)
    manifest = folder / "MANIFEST"
    first, second = manifest.read_text().splitlines(keepends=True)
    manifest.write_text(first + line + "\n" + second)
    with pytest.raises(SegmentError, match=r"MANIFEST:2 is not a segment entry .*fix: delete that line"):
        read_manifest(folder)
    out = onboard_run(tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "MANIFEST:2 is not a segment entry" in out.stderr and "fix: delete that line" in out.stderr
    assert manifest.read_text().splitlines()[1] == line  # a damaged line in the middle is not touched


def test_blank_manifest_lines_are_ignored(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    write_segment(folder, 2)
    manifest = folder / "MANIFEST"
    first, second = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("\n" + first + "  \n" + second + "\n\n")
    assert [e["segment"] for e in read_manifest(folder)] == ["000001.mcap", "000002.mcap"]
    assert len(list(iter_transitions(folder))) == 40


def tear_last_line(folder: Path, keep: int) -> bytes:
    """MANIFEST as a power cut mid-append leaves it: its last line cut to `keep` characters, no newline."""
    manifest = folder / "MANIFEST"
    *lines, last = manifest.read_bytes().splitlines(keepends=True)
    torn = last[:keep].rstrip(b"\n")
    manifest.write_bytes(b"".join(lines) + torn)
    return torn


def test_a_torn_last_manifest_line_is_cut_off_into_a_copy_and_its_segment_listed_again(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    write_segment(folder, 2)
    torn = tear_last_line(folder, 30)
    with pytest.raises(
        SegmentError, match="MANIFEST:2 .*last line was cut short by a power cut mid-append; fix: start"
    ):
        read_manifest(folder)  # a reader never guesses: it names the repair

    recorder = Recorder(tmp_path, "robot")
    assert recorder.torn == torn and (folder / "MANIFEST.torn").read_bytes() == torn + b"\n"
    assert [p.name for p in recorder.recovered] == ["000002.mcap"]
    entry = read_manifest(folder)[-1]
    assert entry["segment"] == "000002.mcap" and entry["recovered"] is True
    good, problems = verified_segments(folder)
    assert [p.name for p in good] == ["000001.mcap", "000002.mcap"] and problems == []
    before = (folder / "MANIFEST").read_bytes()
    recorder.close()
    assert Recorder(tmp_path, "robot").torn == b"" and (folder / "MANIFEST").read_bytes() == before


def test_a_last_manifest_line_that_lost_only_its_newline_is_kept_as_written(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    whole = (folder / "MANIFEST").read_bytes()
    tear_last_line(folder, len(whole))
    recorder = Recorder(tmp_path, "robot")
    assert recorder.recovered == [] and not (folder / "MANIFEST.torn").exists()
    assert (folder / "MANIFEST").read_bytes() == whole
    recorder.close()
    write_segment(folder, 2)  # the next line goes on a line of its own
    assert [e.get("recovered", False) for e in read_manifest(folder)] == [False, False]


def test_a_torn_manifest_line_whose_segment_is_cut_short_too_quarantines_the_segment(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    second = write_segment(folder, 2)
    tear_last_line(folder, 10)
    cut(second, 500)
    assert Recorder(tmp_path, "robot").recovered == []
    assert (folder / "quarantine" / "000002.mcap").exists()
    assert verified_segments(folder)[1] == []


def test_onboard_run_starts_on_a_torn_manifest_and_keeps_every_segment(tmp_path):
    """The reported failure: after a power cut mid-append every start, the service's too, exited 2."""
    folder = tmp_path / "sim"
    write_segment(folder, 1)
    write_segment(folder, 2)
    tear_last_line(folder, 40)
    out = onboard_run(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "MANIFEST.torn" in out.stderr and "listed" in out.stderr and "000002.mcap" in out.stderr
    assert all(line.startswith("warning: ") for line in out.stderr.splitlines()), out.stderr  # as errors say error:
    good, problems = verified_segments(folder)
    assert [p.name for p in good] == ["000001.mcap", "000002.mcap", "000003.mcap"] and problems == []
    assert json.loads((folder / "MANIFEST").read_text().splitlines()[1])["recovered"] is True


def test_one_recorder_per_folder_at_a_time(tmp_path):
    """A second run on a folder would take the first's live .partial for a crash's and reuse its episode ids."""
    first = Recorder(tmp_path, "robot")
    first.start_episode(first.next_episode, dict(task="pendulum"))
    with pytest.raises(
        FolderInUse, match=f"another run \\(pid {os.getpid()}\\) is recording into {tmp_path / 'robot'}"
    ):
        Recorder(tmp_path, "robot")
    assert (tmp_path / "robot" / "000001.mcap.partial").exists()  # the live segment was left alone
    first.end_episode()
    first.close()
    assert Recorder(tmp_path, "robot").next_episode == 2


def summary_of(segment: Path):
    with open(segment, "rb") as f:
        return make_reader(f).get_summary()


def test_a_closed_segment_is_chunked_compressed_and_indexed_for_foxglove(tmp_path):
    folder = tmp_path / "robot"
    segment = write_segment(folder, 1)
    summary = summary_of(segment)
    assert summary.chunk_indexes and {chunk.compression for chunk in summary.chunk_indexes} == {"zstd"}
    assert summary.statistics.message_count == 20 and [m.name for m in summary.metadata_indexes] == ["segment"]
    assert summary.statistics.channel_count == summary.statistics.schema_count == len(CHANNELS)  # each once
    with open(segment, "rb") as f:  # an indexed read (what Foxglove does) gives every record as written
        steps = [json.loads(m.data) for _, _, m in make_reader(f).iter_messages(topics=["/transition"])]
    assert [step["t"] for step in steps] == list(range(20)) and steps == read_segment(segment)[1]["/transition"]
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "000001.mcap", "MANIFEST"]  # no .partial left


@pytest.mark.parametrize(
    "fails, left",
    [
        ("os.replace", ["000001.mcap.closing", "000001.mcap.partial"]),  # a crash after the copy, before its rename
        ("os.fsync", ["000001.mcap.partial"]),  # a full disk while the copy is written: its space is given back
    ],
)
def test_a_failure_while_a_segment_is_closed_keeps_the_partial_and_the_next_start_recovers_it(
    tmp_path, monkeypatch, fails, left
):
    folder = tmp_path / "robot"
    recorder = Recorder(tmp_path, "robot")
    recorder.start_episode(1, dict(task="pendulum"))
    for t in range(5):
        recorder.write("/transition", dict(t=t, cost=1.0))
    real, calls = getattr(os, fails.split(".")[1]), []

    def fail_on_the_copy(*args):  # the .partial's own fsync goes through; the copy's fails
        calls.append(args)
        if fails == "os.fsync" and len(calls) == 1:
            return real(*args)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(f"onboard.recorder.{fails}", fail_on_the_copy)
    with pytest.raises(OSError, match="No space left"):
        recorder.end_episode()
    monkeypatch.undo()
    assert not recorder.in_episode  # over: the loop's safe exit does not close it again
    recorder.close()
    assert sorted(p.name for p in folder.glob("0*")) == left
    assert read_manifest(folder) == []

    assert [p.name for p in Recorder(tmp_path, "robot").recovered] == ["000001.mcap"]
    assert sorted(p.name for p in folder.glob("0*")) == ["000001.mcap"]  # the stale .closing is gone
    metadata, topics = read_segment(folder / "000001.mcap")
    assert [step["t"] for step in topics["/transition"]] == list(range(5)) and "recovery" in metadata
    summary = summary_of(folder / "000001.mcap")  # a recovered segment is indexed too, each channel once
    assert summary.chunk_indexes and summary.statistics.channel_count == len(CHANNELS)
    assert verified_segments(folder)[1] == []


def test_a_copy_left_without_its_partial_is_quarantined_not_trusted(tmp_path):
    folder = tmp_path / "robot"
    write_segment(folder, 1)
    stray = folder / "000002.mcap.closing"
    stray.write_bytes((folder / "000001.mcap").read_bytes())
    assert Recorder(tmp_path, "robot").recovered == []
    assert (folder / "quarantine" / "000002.mcap.closing").exists() and not stray.exists()
    assert [p.name for p in verified_segments(folder)[0]] == ["000001.mcap"]


def test_a_lock_file_removed_as_it_is_taken_is_taken_anew(tmp_path, monkeypatch):
    """A recorder gives up a folder it made and never recorded into by removing its lock file; a run that opened
    that file a moment before must not lock the removed one while a third run locks its replacement."""
    import fcntl

    from onboard.fileio import hold_lock

    path = tmp_path / ".lock"
    path.write_text("")
    real_flock, calls = fcntl.flock, []

    def flock_after_a_removal(f, operation):
        if not calls:  # the holder removes the file between our open and our lock, and another run makes a new one
            path.unlink()
            path.write_text("")
        calls.append(operation)
        return real_flock(f, operation)

    monkeypatch.setattr("onboard.fileio.fcntl.flock", flock_after_a_removal)
    lock = hold_lock(path)
    assert len(calls) == 2 and os.fstat(lock.fileno()).st_ino == path.stat().st_ino  # the file that is there
    assert path.read_text() == f"{os.getpid()}\n"
