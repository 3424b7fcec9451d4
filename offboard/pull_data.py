"""pull-data: the robot's closed segments and MANIFEST into `data/<robot>/`, every sha256 verified here.

rsync --partial (resumable, idempotent) through the robot's ssh; what fails verification is listed and kept
out of training (moved to rejected/, fetched again by the next pull). With prune, segments verified here
(and only those) are deleted on the robot."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.paths import blocking_file
from offboard.remote import Remote, RemoteError, RemoteSettingsError, check_ssh_settings, prepare_remote, stop_all
from onboard.fileio import write_atomic
from onboard.profile import RobotProfile
from onboard.recorder import MANIFEST, SegmentError, read_manifest, split_torn_tail, verified_segments


@dataclass
class PullReport:
    folder: Path
    transferred: list = field(default_factory=list)  # segment names copied this run
    verified: int = 0  # segments in the folder that match MANIFEST
    problems: list = field(default_factory=list)  # one line each: listed, kept out of training
    pruned: list = field(default_factory=list)  # segments deleted on the robot
    gone: list = field(default_factory=list)  # listed by the robot, deleted there by an earlier pull's prune


def write_manifest(folder: Path, entries: dict[str, dict]) -> None:
    """The folder's MANIFEST, one line per segment by name, replaced whole (a crash leaves the old one or this):
    what lists a segment here, for pull-data and for a fleet's collectors alike."""
    write_atomic(folder / MANIFEST, "".join(json.dumps(entries[n], sort_keys=True) + "\n" for n in sorted(entries)))


def pull_data(
    profile: RobotProfile,
    data_dir: Path = Path("data"),
    prune: bool = False,
    bwlimit: int = 0,
    remote: Remote | None = None,
) -> PullReport:
    """Closed segments + MANIFEST from the robot into `data_dir/<robot>/`, each sha256 verified here. `remote`: the
    robot's, made by a caller that may stop it from another thread."""
    check_ssh_settings(profile)
    with remote or Remote(profile) as remote:
        return _pull(remote, profile, Path(data_dir), prune, bwlimit)


def _pull(remote: Remote, profile: RobotProfile, data_dir: Path, prune: bool, bwlimit: int) -> PullReport:
    info = prepare_remote(remote)
    source = f"{info['dir']}/data/{profile.name}"
    folder = data_dir / profile.name
    incoming = folder / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    report = PullReport(folder)
    limit = [f"--bwlimit={bwlimit}"] if bwlimit else []
    # 1. The robot's MANIFEST as it is now: every segment it lists was closed and fsynced before its line.
    (incoming / MANIFEST).unlink(missing_ok=True)
    remote.rsync(*limit, "--ignore-missing-args", f"{remote.target}:{source}/{MANIFEST}", str(incoming / MANIFEST))
    if not (incoming / MANIFEST).exists():
        print(f"{profile.name} has recorded no closed segment yet ({source})")
        return report
    complete, appending = split_torn_tail((incoming / MANIFEST).read_bytes())
    if appending:  # a line the recorder is appending right now: the next pull takes it
        (incoming / MANIFEST).write_bytes(complete)
    try:
        local_entries = {e["segment"]: e for e in read_manifest(folder)}
    except SegmentError as e:
        raise RemoteError(f"{e} (nothing was imported)") from None
    try:
        robot_entries = read_manifest(incoming)
    except SegmentError as e:  # the copy here names the line; the file to repair is the robot's
        robots = str(e).replace(str(incoming / MANIFEST), f"the robot's {source}/{MANIFEST}")
        raise RemoteError(f"{robots} (nothing was imported)") from None
    # 2. The segments not here yet, or listed here but gone (moved to rejected/): resumable through rsync's
    # partial folder. A name the robot uses for a different segment (its log folder was reset) is a problem:
    # the one here is kept, never overwritten.
    wanted, clashes = [], set()
    for entry in robot_entries:
        name, local = entry["segment"], local_entries.get(entry["segment"])
        if local is None or (local["sha256"] == entry["sha256"] and not (folder / name).is_file()):
            wanted.append(name)
        elif local["sha256"] != entry["sha256"]:
            clashes.add(name)
            report.problems.append(
                f"{folder / name}: the robot lists a different segment under this name (its log folder was reset?): "
                "the one here is kept; pull into another --data-dir for the robot's"
            )
    if wanted:
        (incoming / "wanted").write_text("\n".join(wanted) + "\n")
        report.transferred = remote.rsync(
            *limit,
            "--partial-dir=.incoming/partial",
            "--ignore-missing-args",
            f"--files-from={incoming / 'wanted'}",
            f"{remote.target}:{source}/",
            f"{folder}/",
        )
    report.gone = [name for name in wanted if not (folder / name).is_file()]  # pruned on the robot by an earlier pull
    # 3. MANIFEST here: what was here, plus the robot's lines for the segments that arrived.
    merged = dict(local_entries)
    for entry in robot_entries:
        if entry["segment"] not in clashes and (folder / entry["segment"]).is_file():
            merged.setdefault(entry["segment"], entry)
    write_manifest(folder, merged)
    # 4. Verify every segment; one that fails goes to rejected/ (the next pull fetches it again).
    good, problems = verified_segments(folder)
    report.verified = len(good)
    report.problems += problems
    good_names = {p.name for p in good}
    for name in merged:
        if name not in good_names and (folder / name).is_file():
            (folder / "rejected").mkdir(exist_ok=True)
            shutil.move(folder / name, folder / "rejected" / name)
    # 5. Prune: only segments verified here, with the sha256 the robot listed for them.
    if prune:
        robot_sha = {e["segment"]: e["sha256"] for e in robot_entries}
        doomed = [n for n in sorted(good_names) if robot_sha.get(n) == merged[n]["sha256"]]
        if doomed:
            names = " ".join(shlex.quote(n) for n in doomed)
            remote.run(f"cd {shlex.quote(source)} && rm -f -- {names}")
            report.pruned = doomed
    return report


# --- command line (python -m offboard pull-data) ---------------------------------------------------
def add_command(sub) -> None:
    p = sub.add_parser(
        "pull-data", help="closed segments + MANIFEST from each robot into data/<robot>/, verified (several at once)"
    )
    p.add_argument("--robot", required=True, nargs="+", help="one or more robots' profiles, pulled at once")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--prune", action="store_true", help="delete on the robot the segments verified here")
    p.add_argument("--bwlimit", type=int, default=0, help="rsync bandwidth limit per robot, KiB/s (0: none)")
    p.set_defaults(run=run_command)


def run_command(args, profiles: list[RobotProfile]) -> int:
    """The refusals that need no connection first, then every robot's pull at once (each its own ssh and rsync,
    into its own folder); non-zero when a robot could not be pulled or a segment failed its check. One robot's
    failure is its own line: the others' pulls go on."""
    if args.bwlimit < 0:
        raise RemoteSettingsError(f"--bwlimit {args.bwlimit}: give a limit in KiB/s above 0, or 0 for none")
    names = [profile.name for profile in profiles]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise RemoteSettingsError(
            f"--robot: {', '.join(twice)} given twice; each robot's logs go to one folder, data/<robot>"
        )
    for profile in profiles:  # every robot's settings before any connects: bad input stops the whole command
        if (blocker := blocking_file(Path(args.data_dir) / profile.name)) is not None:
            raise RemoteSettingsError(
                f"--data-dir {args.data_dir}: {blocker} is a file, not a folder; give a folder for the robot's logs"
            )
        check_ssh_settings(profile)
    remotes = [Remote(profile) for profile in profiles]
    with ThreadPoolExecutor(len(profiles)) as pool:  # each pull waits on its own ssh and rsync processes
        pulls = [
            pool.submit(pull_data, profile, args.data_dir, prune=args.prune, bwlimit=args.bwlimit, remote=remote)
            for profile, remote in zip(profiles, remotes, strict=True)
        ]
        try:
            wait(pulls)
        except KeyboardInterrupt:  # it reaches this thread only: the pulls keep their cut files, then stop
            stop_all(remotes)
            raise
    failed = False
    for profile, pull in zip(profiles, pulls, strict=True):
        prefix = f"{profile.name}: " if len(profiles) > 1 else ""
        try:
            report = pull.result()
        except RemoteError as e:
            if len(profiles) == 1:
                raise
            print(f"error: {prefix}{e}", file=sys.stderr)
            failed = True
            continue
        print(
            f"{prefix}pulled {len(report.transferred)} new segment(s) into {report.folder}; {report.verified} verified"
            + (f"; pruned {len(report.pruned)} on the robot" if report.pruned else "")
            + (f"; {len(report.gone)} listed by the robot were pruned there earlier" if report.gone else "")
        )
        for line in report.problems:
            print(f"kept out of training: {line}", file=sys.stderr)
        failed |= bool(report.problems)
    return 1 if failed else 0
