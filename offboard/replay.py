"""replay: a logged episode as a video, drawn from its states with the task's MJCF.

    python -m offboard replay data/sim/000001.mcap --out episode.mp4

Each frame is a logged state rendered by MuJoCo's offscreen renderer (EGL when no display is set:
firmware_bridge/plant.py), with the episode's time, the step's cost and its plan time written on it; the
video runs at the task's control rate. A segment listed in its folder's MANIFEST must match its sha256
there. The video is written beside its final name and renamed into place when complete (imageio with its
ffmpeg: the gym extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from firmware_bridge.paths import blocking_file
from onboard.recorder import SegmentError, listed_segment_problem, read_manifest, read_segment
from onboard.tasks import get_task


class ReplayError(ValueError):
    """A segment that cannot be replayed; the message says why and what to do."""


def read_episode(path: Path) -> tuple[object, dict, dict]:
    """(task, metadata, topics) of a segment, checked against its folder's MANIFEST when listed there."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a segment" if path.is_dir() else "no such segment"
        raise ReplayError(f"{path}: {what}: give a .mcap file from a robot's log folder")
    listed = {entry["segment"]: entry["sha256"] for entry in read_manifest(path.parent)}
    if path.name in listed and (problem := listed_segment_problem(path, listed[path.name])) is not None:
        raise ReplayError(problem)
    try:
        metadata, topics = read_segment(path)
    except SegmentError as e:
        raise ReplayError(str(e)) from None
    if not topics["/transition"]:
        raise ReplayError(f"{path}: no transitions to replay")
    return get_task(metadata["segment"]["task"]), metadata, topics


def frames(task, topics: dict, width: int = 480, height: int = 360, camera: str | None = None):
    """The episode's frames: each transition's state (and the last next state), captioned."""
    from PIL import Image, ImageDraw

    steps = topics["/transition"]
    plan_ms = {m["t"]: m["compute_ms"] for m in topics.get("/mppi", [])}
    states = [(s["t"], s["state"], s["cost"]) for s in steps] + [(steps[-1]["t"] + 1, steps[-1]["next_state"], None)]
    for t, state, cost in states:
        image = Image.fromarray(task.mjcf.render(np.asarray(state), width, height, camera))
        caption = f"t = {t * task.dt:5.2f} s"
        if cost is not None:
            caption += f"   cost {cost:8.3f}"
        if t in plan_ms:
            caption += f"   plan {plan_ms[t]:6.2f} ms"
        ImageDraw.Draw(image).text((8, 8), caption, fill=(255, 255, 255))
        yield np.asarray(image)


def write_video(path: Path, task, topics: dict, width: int = 480, height: int = 360, camera: str | None = None) -> int:
    """The episode as an MP4 at `path` (renamed into place when complete); the number of frames."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.mp4")
    count = 0
    try:
        with imageio.get_writer(partial, fps=round(1 / task.dt), codec="libx264", macro_block_size=8) as writer:
            for frame in frames(task, topics, width, height, camera):
                writer.append_data(frame)
                count += 1
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def replay(segment: Path, out: Path, width: int = 480, height: int = 360, camera: str | None = None) -> int:
    task, _, topics = read_episode(segment)
    if camera is not None and camera not in [task.mjcf.model.camera(i).name for i in range(task.mjcf.model.ncam)]:
        raise ReplayError(f"--camera {camera!r}: {task.name}'s MJCF has no such camera (leave it out for the default)")
    frame = task.mjcf.model.vis.global_
    if width > frame.offwidth or height > frame.offheight:
        raise ReplayError(
            f"--width {width} --height {height}: {task.name}'s MJCF renders at most {frame.offwidth}x{frame.offheight} "
            "(its <visual><global offwidth offheight>); give a smaller size"
        )
    return write_video(out, task, topics, width, height, camera)


# --- command line (python -m offboard replay) -----------------------------------------------------------
def add_command(sub) -> None:
    r = sub.add_parser("replay", help="a logged episode (a segment) as an MP4 video")
    r.add_argument("segment", type=Path, help="a .mcap segment, e.g. data/sim/000001.mcap")
    r.add_argument("--out", type=Path, default=Path("episode.mp4"))
    r.add_argument("--width", type=int, default=480)
    r.add_argument("--height", type=int, default=360)
    r.add_argument("--camera", help="a camera of the task's MJCF (default: its first, else a side view)")
    r.set_defaults(run=run_command)


def run_command(args) -> int:
    if args.width < 16 or args.height < 16 or args.width % 8 or args.height % 8:
        raise ReplayError(f"--width {args.width} --height {args.height}: use multiples of 8, at least 16")
    if args.out.suffix != ".mp4":
        raise ReplayError(f"--out {args.out}: give a .mp4 path")
    if (blocker := blocking_file(args.out.parent)) is not None:
        raise ReplayError(f"--out {args.out}: {blocker} is a file, not a folder; give a .mp4 path in a folder")
    if args.out.is_dir():
        raise ReplayError(f"--out {args.out} is a folder: give the video's file, e.g. {args.out / 'episode.mp4'}")
    count = replay(args.segment, args.out, args.width, args.height, args.camera)
    print(f"wrote {args.out}: {count} frames")
    return 0
