"""Crash-safe episode logs: one MCAP segment per episode, a sha256 MANIFEST, recovery after a crash.

A segment is written as `<log dir>/<robot>/<episode>.mcap.partial`, without chunking so every record
reaches the file as it is written (flushed each step); on `end_episode` it is finished, fsynced and
renamed to `.mcap`, and a line with its sha256 is appended to MANIFEST (fsynced too). On start, a
`.partial` left by a crash is rewritten from its complete records into a segment marked `recovered`
in MANIFEST, or, when nothing in it is readable, moved to `quarantine/` with a log line: never lost,
never taken for a complete segment. Readers trust only segments that MANIFEST lists with a matching
sha256. Standard MCAP with JSON schemas: Foxglove Studio opens the segments.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from onboard.fileio import fsync_dir, sha256_file

log = logging.getLogger("mpq.recorder")

MANIFEST = "MANIFEST"
QUARANTINE = "quarantine"
PARTIAL = ".mcap.partial"


def _array(description: str) -> dict:
    return {"type": "array", "items": {"type": "number"}, "description": description}


CHANNELS = {
    "/transition": {
        "type": "object",
        "properties": {
            "t": {"type": "integer", "description": "step index in the episode"},
            "state": _array("plant state s (qpos, qvel)"),
            "obs": _array("observation of s"),
            "action": _array("command sent (after clipping to bounds)"),
            "cost": {"type": "number", "description": "c(s, a)"},
            "next_state": _array("plant state after the action"),
            "done": {"type": "boolean", "description": "last step of the episode (time limit)"},
        },
    },
    "/mppi": {
        "type": "object",
        "properties": {
            "t": {"type": "integer"},
            "compute_ms": {"type": "number"},
            "ess": {"type": "number"},
            "value": {"type": "number", "description": "free energy V(s)"},
            "deadline_missed": {"type": "boolean"},
        },
    },
    "/link": {
        "type": "object",
        "properties": {
            "t": {"type": "integer"},
            "rtt_us": {"type": ["number", "null"], "description": "command to the state that applied it"},
            "frames": {"type": "integer"},
            "crc_errors": {"type": "integer"},
            "seq_gaps": {"type": "integer"},
            "bytes_skipped": {"type": "integer"},
            "signature_errors": {"type": "integer"},
        },
    },
}


class Recorder:
    """Writes the episodes of one robot into `<log_dir>/<robot>/`."""

    def __init__(self, log_dir: str | Path, robot: str):
        self.dir = Path(log_dir) / robot
        self.dir.mkdir(parents=True, exist_ok=True)
        self.robot = robot
        self._file = None
        self._writer: Writer | None = None
        self._partial: Path | None = None
        self.recovered = recover_partials(self.dir) + list_unlisted(self.dir)
        # After recovery every segment on disk is in MANIFEST: one past its highest id, read once here and
        # counted on after. Segments pruned after a pull stay listed, so their names are never reused.
        names = [entry["segment"].split(".")[0] for entry in read_manifest(self.dir)]
        self.next_episode = max((int(n) for n in names if n.isdigit()), default=0) + 1

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
        self._writer.add_metadata("segment", {k: json.dumps(v) for k, v in metadata.items()})
        self._file.flush()
        return self._partial

    def write(self, topic: str, record: dict, time_ns: int | None = None) -> None:
        stamp = time.time_ns() if time_ns is None else time_ns
        self._writer.add_message(self._channels[topic], stamp, json.dumps(record).encode(), stamp)

    def flush(self) -> None:
        """Hand what was written to the OS: a crash of this process then loses nothing written so far."""
        self._file.flush()

    def end_episode(self, summary: dict | None = None) -> Path:
        """Finish, fsync, rename to .mcap, and append its sha256 to MANIFEST. Returns the segment."""
        if summary:
            self._writer.add_metadata("summary", {k: json.dumps(v) for k, v in summary.items()})
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        segment = self._partial.with_name(self._partial.name[: -len(".partial")])
        os.replace(self._partial, segment)
        append_manifest(self.dir, segment, recovered=False)
        self._writer = self._file = self._partial = None
        return segment

    @property
    def in_episode(self) -> bool:
        return self._writer is not None


def _start_writer(f) -> Writer:
    """Unchunked and uncompressed: every record reaches the file as written, so a crash keeps it."""
    writer = Writer(f, use_chunking=False, compression=CompressionType.NONE)
    writer.start(profile="", library="mpq")
    return writer


def append_manifest(directory: Path, segment: Path, recovered: bool) -> None:
    entry = {"segment": segment.name, "sha256": sha256_file(segment), "bytes": segment.stat().st_size}
    if recovered:
        entry["recovered"] = True
    with open(directory / MANIFEST, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(directory)


def _complete_records(path: Path) -> list:
    """The records of an MCAP file up to the first one a crash cut short."""
    records = []
    with open(path, "rb") as f:
        try:
            for record in StreamReader(f, skip_magic=False).records:
                records.append(record)
        except Exception:  # truncated or garbled tail: keep what came before it
            pass
    return records


def recover_partials(directory: Path) -> list[Path]:
    """Rewrite each `.mcap.partial` from its complete records, marked recovered; quarantine the rest."""
    recovered = []
    for partial in sorted(directory.glob(f"*{PARTIAL}")):
        records = _complete_records(partial)
        messages = [r for r in records if isinstance(r, Message)]
        if not messages:
            (directory / QUARANTINE).mkdir(exist_ok=True)
            shutil.move(partial, directory / QUARANTINE / partial.name)
            log.warning("quarantined %s: no complete message in it", partial)
            continue
        segment = partial.with_name(partial.name[: -len(".partial")])
        tmp = segment.with_name(segment.name + ".recovering")
        with open(tmp, "wb") as f:
            writer = _start_writer(f)
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
            recovery = {"recovered_from": json.dumps(partial.name), "messages": json.dumps(len(messages))}
            writer.add_metadata("recovery", recovery)
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, segment)
        partial.unlink()
        append_manifest(directory, segment, recovered=True)
        log.warning("recovered %s: %d messages before the crash", segment, len(messages))
        recovered.append(segment)
    return recovered


def list_unlisted(directory: Path) -> list[Path]:
    """A crash between a segment's rename and its MANIFEST line leaves a complete, fsynced `.mcap` that
    nothing lists: list it now (marked recovered), so a pull takes it. Never lost, never rewritten."""
    listed = {entry["segment"] for entry in read_manifest(directory)}
    unlisted = [path for path in sorted(directory.glob("*.mcap")) if path.name not in listed]
    for path in unlisted:
        append_manifest(directory, path, recovered=True)
        log.warning("listed %s in MANIFEST: it was closed but not listed before a crash", path)
    return unlisted


# --- reading -------------------------------------------------------------------------------------
class SegmentError(ValueError):
    """A segment that must not be trusted; the message names it and why."""


def read_manifest(directory: Path) -> list[dict]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise SegmentError(f"{path}:{number} is not a manifest line: the MANIFEST is damaged") from None
    return entries


def verified_segments(directory: Path) -> tuple[list[Path], list[str]]:
    """Segments whose sha256 matches MANIFEST, and one line for each problem found."""
    directory = Path(directory)
    good, problems = [], []
    listed = {}
    for entry in read_manifest(directory):
        listed[entry["segment"]] = entry
    for name, entry in sorted(listed.items()):
        path = directory / name
        if not path.exists():
            problems.append(f"{path}: listed in MANIFEST but missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: sha256 does not match MANIFEST (changed or damaged after it was closed)")
        else:
            good.append(path)
    for path in sorted(directory.glob("*.mcap")):
        if path.name not in listed:
            problems.append(f"{path}: not in MANIFEST (not closed by the recorder)")
    return good, problems


def read_segment(path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(metadata by name, records by topic) of one closed segment."""
    metadata, topics = {}, {topic: [] for topic in CHANNELS}
    channels = {}
    with open(path, "rb") as f:
        for record in StreamReader(f).records:
            if isinstance(record, Channel):
                channels[record.id] = record.topic
            elif isinstance(record, Metadata):
                metadata[record.name] = {k: json.loads(v) for k, v in record.metadata.items()}
            elif isinstance(record, Message):
                topics.setdefault(channels[record.channel_id], []).append(json.loads(record.data))
    return metadata, topics


def iter_transitions(directory: Path) -> Iterator[dict]:
    """Every transition of every verified segment, in episode order; raises SegmentError on a bad one."""
    good, problems = verified_segments(directory)
    if problems:
        raise SegmentError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    for path in good:
        _, topics = read_segment(path)
        yield from topics["/transition"]
