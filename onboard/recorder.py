"""Crash-safe episode logs: one MCAP segment per episode, a sha256 MANIFEST, recovery after a crash.

A segment is written as `<log dir>/<robot>/<episode>.mcap.partial`, without chunking so every record
reaches the file as it is written (flushed each step); on `end_episode` it is finished and written again
as the `.mcap` (chunked, zstd-compressed and indexed, so Foxglove seeks in it and a pull moves less),
fsynced, and a line with its sha256 is appended to MANIFEST (fsynced too). On start, a
`.partial` left by a crash is rewritten from its complete records into a segment marked `recovered`
in MANIFEST, or, when nothing in it is readable, moved to `quarantine/` with a log line: never lost,
never taken for a complete segment. A MANIFEST line that a power cut left unfinished is cut off into
MANIFEST.torn, and a `.mcap` that no line lists is listed again if it reads as a complete segment, else
quarantined. Readers trust only segments that MANIFEST lists with a matching sha256; a listed segment
that cannot be read is one problem line, never a crash. Standard MCAP with JSON schemas: Foxglove Studio
opens the segments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mcap.records import Channel, DataEnd, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, IndexType, Writer

from firmware_bridge.link import HOST_COUNTERS, PLANT_COUNTERS
from firmware_bridge.paths import existing_ancestor
from onboard.errors import LoopError
from onboard.fileio import append_durable, fsync_dir, hold_lock, sha256_file

log = logging.getLogger("mpq.recorder")

MANIFEST = "MANIFEST"
LOCK = ".lock"  # held (flock) by the one recorder of the folder
TORN = "MANIFEST.torn"
QUARANTINE = "quarantine"
PARTIAL = ".mcap.partial"
CLOSING = ".closing"  # a segment being written from its .partial; the .partial stays until it is renamed


def _array(description: str) -> dict:
    return {"type": "array", "items": {"type": "number"}, "description": description}


def _counts(description: str, names: tuple[str, ...]) -> dict:
    return {name: {"type": "integer", "description": description} for name in names}


# Every field the onboard loop writes, with one JSON type each: Foxglove reads these schemas (and Lichtblick refuses a
# channel whose schema gives a field a list of types). A field that is not known yet is left out, never null.
CHANNELS = {
    "/transition": {
        "type": "object",
        "properties": {
            "t": {"type": "integer", "description": "step index in the episode"},
            "state": _array("plant state s (MuJoCo's full physics state: time, qpos, qvel, ...)"),
            "obs": _array("observation of s"),
            "action": _array("the command the plant applied over the period (zeros while disarmed): trained on"),
            "commanded": _array("the command the planner sent (after clipping to bounds)"),
            "applied_seq": {"type": "integer", "description": "sequence number of the command the plant applied"},
            "held": {"type": "boolean", "description": "the plant held an older command (ours late or lost)"},
            "armed": {"type": "boolean", "description": "the period drove the actuators"},
            "cost": {"type": "number", "description": "c(s, a)"},
            "next_state": _array("plant state after the action"),
            "done": {"type": "boolean", "description": "last step of the episode (time limit)"},
        },
    },
    "/mppi": {
        "type": "object",
        "properties": {
            "t": {"type": "integer"},
            "compute_ms": {"type": "number", "description": "the plan's compute time"},
            "ess": {"type": "number", "description": "effective sample size of the MPPI weights"},
            "value": {"type": "number", "description": "free energy V(s)"},
            "deadline_missed": {"type": "boolean"},
        },
    },
    "/link": {
        "type": "object",
        "properties": {
            "t": {"type": "integer"},
            "rtt_us": {"type": "number", "description": "command to the state that applied it (absent until one has)"},
            **_counts("this end's count since the link opened", HOST_COUNTERS),
            "plant": {
                "type": "object",
                "description": "the plant's own counters, from its latest status (empty before the first)",
                "properties": _counts("the plant's count", PLANT_COUNTERS),
            },
        },
    },
}


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def strict_json(value) -> str:
    """JSON that every parser reads: a NaN or infinite number (a cost gone bad) is written as null."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_or_none(value), allow_nan=False)


def log_folder_error(folder: Path, error: OSError) -> LoopError:
    """A folder a run cannot keep its segments in, as the operator's one line."""
    return LoopError(f"cannot keep segments in {folder} ({error.strerror}): set another log_dir")


def check_log_folder(folder: Path) -> None:
    """What a run's Recorder needs of `folder`: that it can be made and written in. Checked where it would be made,
    without making it or taking its lock (a selfcheck runs while the service records there). Raises LoopError."""
    try:
        with tempfile.TemporaryFile(dir=existing_ancestor(folder)):  # a file there: ENOTDIR
            pass
    except OSError as e:
        raise log_folder_error(folder, e) from None


class Recorder:
    """Writes the episodes of one robot into `<log_dir>/<robot>/`."""

    def __init__(self, log_dir: str | Path, robot: str):
        self.dir = Path(log_dir) / robot
        made = self.dir.relative_to(existing_ancestor(self.dir)).parts
        self._made = [self.dir, *self.dir.parents][: len(made)]  # the folders this recorder makes, innermost first
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.dir)
        self.robot = robot
        self._file = None
        self._writer: Writer | None = None
        self._partial: Path | None = None
        self.torn = repair_manifest(self.dir)
        self.recovered = recover_partials(self.dir) + list_unlisted(self.dir)
        # After recovery every segment on disk is in MANIFEST or quarantine/: one past the highest id of
        # both, read once here and counted on after. Segments pruned after a pull stay listed, so their
        # names are never reused.
        self.next_episode = next_episode_id(self.dir)

    def close(self) -> None:
        """Let another run record into this folder (the lock also goes when the process ends). A folder this
        recorder made and never started an episode in (a run refused at its port) is removed with the folders it
        made above it, not left behind."""
        if self._lock is None:
            return
        if self._made and [p.name for p in self.dir.iterdir()] == [LOCK]:
            (self.dir / LOCK).unlink()
            with contextlib.suppress(OSError):  # another run has just made its lock here, or a folder above is used
                for folder in self._made:
                    folder.rmdir()
        self._lock.close()
        self._lock = None

    # --- one episode ----------------------------------------------------------------------------
    def start_episode(self, episode_id: int, metadata: dict) -> Path:
        """Open `<episode>.mcap.partial` and write the schemas, channels and the segment's metadata."""
        if self._writer is not None:
            raise RuntimeError("end the current episode before starting another")
        self._partial = self.dir / f"{episode_id:06d}{PARTIAL}"
        self.next_episode = max(self.next_episode, episode_id + 1)
        self._file = open(self._partial, "wb")
        self._writer = _start_writer(self._file)
        self._channels = {}
        for topic, schema in CHANNELS.items():
            schema_id = self._writer.register_schema(topic.strip("/"), "jsonschema", json.dumps(schema).encode())
            self._channels[topic] = self._writer.register_channel(topic, "json", schema_id)
        self._writer.add_metadata("segment", {k: strict_json(v) for k, v in metadata.items()})
        self._file.flush()
        return self._partial

    def write(self, topic: str, record: dict, time_ns: int | None = None) -> None:
        stamp = time.time_ns() if time_ns is None else time_ns
        self._writer.add_message(self._channels[topic], stamp, strict_json(record).encode(), stamp)

    def flush(self) -> None:
        """Hand what was written to the OS: a crash of this process then loses nothing written so far."""
        self._file.flush()

    def end_episode(self, summary: dict | None = None) -> Path:
        """Finish and fsync the .partial, write it again as the indexed .mcap, and append its sha256 to MANIFEST.
        Returns the segment. Whatever fails, the episode is over here: the .partial stays for the next start."""
        partial = self._partial
        try:
            if summary:
                self._writer.add_metadata("summary", {k: strict_json(v) for k, v in summary.items()})
            self._writer.finish()
            self._file.flush()
            os.fsync(self._file.fileno())  # whole on disk before its copy is made: a power cut keeps one of them
        finally:
            self._file.close()
            self._writer = self._file = self._partial = None
        segment = _close_segment(self.dir, partial, _records(partial))
        append_manifest(self.dir, segment, recovered=False)
        return segment

    @property
    def in_episode(self) -> bool:
        return self._writer is not None


def _start_writer(f, live: bool = True) -> Writer:
    """live (the .partial): unchunked and uncompressed, every record reaches the file as written, so a crash keeps
    it. Closed (the .mcap): chunked, zstd-compressed and indexed."""
    if live:
        writer = Writer(f, use_chunking=False, compression=CompressionType.NONE)
    else:
        writer = Writer(f, compression=CompressionType.ZSTD, index_types=IndexType.ALL)
    writer.start(profile="", library="mpq")
    return writer


def _close_segment(directory: Path, partial: Path, records: list, metadata: dict | None = None) -> Path:
    """Write a .partial's records (and `metadata`, name -> {key: str}) as its closed segment, fsynced, then remove
    the .partial. A crash before the rename leaves the .partial (fsynced by end_episode), which the next start
    recovers (removing the stale .closing); a crash after it, a complete .mcap that the next start lists (recovered
    again from the .partial if that is still there). Returns the segment, not yet in MANIFEST."""
    segment = partial.with_name(partial.name[: -len(".partial")])
    closing = segment.with_name(segment.name + CLOSING)
    try:
        with open(closing, "wb") as f:
            writer = _start_writer(f, live=False)
            schema_ids, channel_ids = {}, {}
            for r in records:
                if isinstance(r, Schema):
                    schema_ids[r.id] = writer.register_schema(r.name, r.encoding, r.data)
                elif isinstance(r, Channel):
                    channel_ids[r.id] = writer.register_channel(r.topic, r.message_encoding, schema_ids[r.schema_id])
                elif isinstance(r, Metadata):
                    writer.add_metadata(r.name, r.metadata)
                elif isinstance(r, Message) and r.channel_id in channel_ids:
                    writer.add_message(channel_ids[r.channel_id], r.log_time, r.data, r.publish_time)
            for name, values in (metadata or {}).items():
                writer.add_metadata(name, values)
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk: the space goes back, the .partial stays for the next start
        closing.unlink(missing_ok=True)
        raise
    os.replace(closing, segment)
    partial.unlink()
    fsync_dir(directory)
    return segment


def append_manifest(directory: Path, segment: Path, recovered: bool) -> None:
    entry = {"segment": segment.name, "sha256": sha256_file(segment), "bytes": segment.stat().st_size}
    if recovered:
        entry["recovered"] = True
    append_durable(directory / MANIFEST, (json.dumps(entry, sort_keys=True) + "\n").encode())
    fsync_dir(directory)


def _records(path: Path, cut_short_ok: bool = False) -> list:
    """The records of an MCAP file's data section (its summary repeats the schemas and channels); cut_short_ok: up
    to the first one a crash cut short, else an error there."""
    records = []
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, skip_magic=False).records:
                if isinstance(record, DataEnd):
                    break
                records.append(record)
        except Exception:  # truncated or garbled tail: keep what came before it
            if not cut_short_ok:
                raise
    return records


class FolderInUse(RuntimeError):
    """Another process records into this log folder."""


def _lock_folder(directory: Path):
    """One recorder per log folder. A second one would take the first's live `.partial` for a crash's and
    "recover" it, and number its episodes as the first does: a listed segment would be overwritten."""
    lock = hold_lock(directory / LOCK)
    if lock is None:
        holder = (directory / LOCK).read_text().strip() or "?"
        raise FolderInUse(
            f"another run (pid {holder}) is recording into {directory}: stop it first, or give this run another "
            "log_dir or robot name"
        )
    return lock


def _quarantine(directory: Path, path: Path, why: str) -> None:
    """Move a file no reader may trust out of the log folder, never over an earlier one: kept, never deleted."""
    folder = directory / QUARANTINE
    folder.mkdir(exist_ok=True)
    target, copies = folder / path.name, 1
    while target.exists():
        copies += 1
        target = folder / f"{path.name}.{copies}"
    shutil.move(path, target)
    fsync_dir(folder)
    fsync_dir(directory)
    log.warning("quarantined %s as %s: %s", path, target, why)


def recover_partials(directory: Path) -> list[Path]:
    """Rewrite each `.mcap.partial` from its complete records, marked recovered; quarantine the rest. A `.closing`
    that a crash left is a copy of its .partial, which is recovered instead (one without its .partial, which
    `_close_segment` removes only after the rename, is quarantined: kept, never trusted)."""
    for closing in sorted(directory.glob(f"*{CLOSING}")):
        if closing.with_name(closing.name[: -len(CLOSING)] + ".partial").exists():
            closing.unlink()
        else:
            _quarantine(directory, closing, "a segment's copy left by a crash, without its .partial")
    recovered = []
    for partial in sorted(directory.glob(f"*{PARTIAL}")):
        records = _records(partial, cut_short_ok=True)
        messages = [r for r in records if isinstance(r, Message)]
        if not messages:
            _quarantine(directory, partial, "no complete message in it")
            continue
        recovery = {"recovered_from": json.dumps(partial.name), "messages": json.dumps(len(messages))}
        segment = _close_segment(directory, partial, records, {"recovery": recovery})
        append_manifest(directory, segment, recovered=True)
        log.warning("recovered %s: %d messages before the crash", segment, len(messages))
        recovered.append(segment)
    return recovered


def list_unlisted(directory: Path) -> list[Path]:
    """A crash between a segment's rename and its MANIFEST line leaves a complete, fsynced `.mcap` that
    nothing lists: list it now (marked recovered), so a pull takes it. One that does not read as a complete
    segment (cut short, damaged) would break every reader: it goes to quarantine/. Never lost, never rewritten."""
    listed = {entry["segment"] for entry in read_manifest(directory)}
    recovered = []
    for path in sorted(directory.glob("*.mcap")):
        if path.name in listed:
            continue
        try:
            read_segment(path)
        except SegmentError as e:
            _quarantine(directory, path, f"not listed in MANIFEST, and {str(e).removeprefix(f'{path}: ')}")
            continue
        append_manifest(directory, path, recovered=True)
        log.warning("listed %s in MANIFEST: it was closed but not listed before a crash", path)
        recovered.append(path)
    return recovered


def split_torn_tail(data: bytes) -> tuple[bytes, bytes]:
    """(the complete lines, what follows the last newline): an append that a power cut, or a writer still at
    work, has not finished leaves its line without the newline that ends it."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def repair_manifest(directory: Path) -> bytes:
    """A power cut mid-append leaves MANIFEST ending in a torn line that would stop every later start. A
    whole entry that only lost its newline gets it back; anything else is cut off into MANIFEST.torn (kept,
    never deleted), and list_unlisted then lists its segment again if that is complete. Returns what was cut."""
    path = directory / MANIFEST
    if not path.exists():
        return b""
    complete, tail = split_torn_tail(path.read_bytes())
    if not tail.strip():
        return b""
    if _manifest_entry(tail) is not None:
        append_durable(path, b"\n")
        log.warning("ended the last line of %s: a power cut took only its newline", path)
        return b""
    append_durable(directory / TORN, tail + b"\n")
    with open(path, "r+b") as f:
        f.truncate(len(complete))
        os.fsync(f.fileno())
    fsync_dir(directory)
    log.warning(
        "cut a torn last line (%d bytes) off %s into %s: a power cut while it was appended", len(tail), path, TORN
    )
    return tail


# --- reading -------------------------------------------------------------------------------------
class SegmentError(ValueError):
    """A segment that must not be trusted; the message names it and why."""


def _manifest_entry(line: bytes) -> dict | None:
    """The entry on one MANIFEST line, or None when the line is not one: a name in this folder and a sha256."""
    try:
        entry = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    name = entry.get("segment")
    if not isinstance(name, str) or not name.endswith(".mcap") or Path(name).name != name:
        return None
    return entry


def episode_id(name: str) -> int | None:
    """The episode a segment's file name says (000007.mcap -> 7); None for any other name."""
    stem = name.split(".")[0]
    return int(stem) if stem.isdigit() else None


def next_episode_id(directory: Path) -> int:
    """One past the highest episode listed in the folder's MANIFEST or quarantined there: segments pruned after a
    pull stay listed, so their ids are never used again."""
    names = [entry["segment"] for entry in read_manifest(directory)]
    names += [path.name for path in (Path(directory) / QUARANTINE).glob("*")]
    return max((i for i in map(episode_id, names) if i is not None), default=0) + 1


def read_manifest(directory: Path) -> list[dict]:
    """The entries of MANIFEST; blank lines are skipped, any other line that is not an entry is a SegmentError."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")  # the last is b"" when the file ends with its newline
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        entry = _manifest_entry(line)
        if entry is None:
            shown = line[:60].decode(errors="replace")
            if number == len(lines):  # no newline after it: an append cut short
                why = "this last line was cut short by a power cut mid-append; fix: start `python -m onboard run` on "
                why += "this folder (it repairs that), or delete that line"
            else:
                why = "the MANIFEST is damaged; fix: delete that line (the robot's next `python -m onboard run`, or "
                why += "the next pull-data, lists its segment again)"
            raise SegmentError(f"{path}:{number} is not a segment entry ({shown!r}): {why}")
        entries.append(entry)
    return entries


def listed_segment_problem(path: Path, sha256: str) -> str | None:
    """Why a segment that MANIFEST lists with `sha256` cannot be trusted (missing, or changed since it was
    closed), or None when it matches."""
    if not path.exists():
        return f"{path}: listed in MANIFEST but missing"
    if sha256_file(path) != sha256:
        return f"{path}: sha256 does not match MANIFEST (changed or damaged after it was closed)"
    return None


def unlisted_segment_problems(directory: Path, listed: set[str]) -> list[str]:
    """One line for each segment in `directory` whose name is not in `listed` (MANIFEST's): not closed by us."""
    return [
        f"{path}: not in MANIFEST (not closed by the recorder)"
        for path in sorted(Path(directory).glob("*.mcap"))
        if path.name not in listed
    ]


def verified_segments(directory: Path, skip: set[str] = frozenset()) -> tuple[list[Path], list[str]]:
    """Segments whose sha256 matches MANIFEST, and one line for each problem found. skip: names of listed
    segments the caller has already (neither hashed again nor returned)."""
    directory = Path(directory)
    good, problems = [], []
    listed = {entry["segment"]: entry for entry in read_manifest(directory)}
    for name, entry in sorted(listed.items()):
        if name in skip:
            continue
        problem = listed_segment_problem(directory / name, entry["sha256"])
        if problem is None:
            good.append(directory / name)
        else:
            problems.append(problem)
    return good, problems + unlisted_segment_problems(directory, set(listed))


def read_segment(path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(metadata by name, records by topic) of one closed segment, read to its footer: a segment cut short
    or damaged is a SegmentError naming it, so a reader can leave it out and go on with the others."""
    metadata, topics = {}, {topic: [] for topic in CHANNELS}
    channels = {}
    try:
        with open(path, "rb") as f:
            for record in StreamReader(f).records:
                if isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, Metadata):
                    metadata[record.name] = {k: json.loads(v) for k, v in record.metadata.items()}
                elif isinstance(record, Message):
                    topics.setdefault(channels[record.channel_id], []).append(json.loads(record.data))
    except Exception as e:  # mcap, struct, JSON, key and OS errors alike: this segment cannot be trusted
        raise SegmentError(
            f"{path}: not a complete segment (cut short or damaged: {str(e) or type(e).__name__})"
        ) from None
    return metadata, topics


def iter_transitions(directory: Path) -> Iterator[dict]:
    """Every transition of every verified segment, in episode order; raises SegmentError (one line naming the
    segment) on one that fails its sha256 or cannot be read."""
    good, problems = verified_segments(directory)
    if problems:
        raise SegmentError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    for path in good:
        _, topics = read_segment(path)
        yield from topics["/transition"]
