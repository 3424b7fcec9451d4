"""export-minari: a robot's verified segments as a Minari dataset, for anyone who trains offline RL on them.

    python -m offboard export-minari --data data/sim --name mpq/pendulum/sim-v0

Every segment whose sha256 matches its folder's MANIFEST becomes one episode; a segment that fails its
check, or was cut short, is named on stderr and left out, never exported. An episode holds the
observations the loop recorded (plus the observation of the last next state), the actions the plant
applied, rewards = minus the task's costs, and at its last step a truncation, never a termination: the tasks
have no terminal states, and an episode the loop cut short (a failsafe, missed deadlines, a stopped run) did not
reach one (a termination would tell an offline learner that no cost follows, and make cutting episodes short
look good). `safe_stop` in the episode's metadata says why the loop stopped the plant, where it did. Its
metadata: the segment's name and sha256, robot, task, model sha256, MPPI settings (JSON), backend, code
version, start seed. The dataset's environment is the task's Gymnasium environment on the hardware path
(`mpq/<Task>-v0`, offboard/gym_env.py); its evaluation environment the same task in plain MuJoCo.
Datasets go where Minari keeps them ($MINARI_DATASETS_PATH, else ~/.minari/datasets); a name already
there is refused, and a write that fails removes what it began.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from onboard.recorder import MANIFEST, SegmentError, read_manifest, read_segment, verified_segments
from onboard.tasks import TASKS, get_task

# Minari's dataset id, stricter: a version, and ASCII names only (the id is a folder path in Minari's store)
DATASET_ID = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*-v[0-9]+")


class MinariExportError(ValueError):
    """Nothing exported; the message says why and what to do."""


def episodes_from_segments(folders: list[Path], task: str | None = None) -> tuple[str, list[dict], list[str]]:
    """(task, episodes, problems) from the verified segments of `folders` (a folder given twice, once): each
    episode the arrays Minari takes and the segment's metadata. `task`: only its segments (the others are
    listed as left out), as train's --task; None: the folders must hold one task's."""
    episodes, problems, tasks = [], [], set()
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        good, found = verified_segments(folder)
        problems += found
        problems += [
            f"{partial}: an episode still recording, or cut short by a crash (the next onboard run on this folder "
            "recovers it)"
            for partial in sorted(folder.glob("*.mcap.partial"))
        ]
        listed = {entry["segment"]: entry["sha256"] for entry in read_manifest(folder)}
        for path in good:
            try:
                metadata, topics = read_segment(path)
            except SegmentError as e:
                problems.append(str(e))
                continue
            transitions = topics["/transition"]
            if not transitions:
                problems.append(f"{path}: no transitions")
                continue
            segment, summary = metadata.get("segment", {}), metadata.get("summary", {})
            if task is not None and segment.get("task") != task:
                problems.append(f"{path}: recorded for task {segment.get('task')!r}, not {task!r}")
                continue
            tasks.add(segment.get("task"))
            recovered = "recovery" in metadata  # rewritten from what a crash left: no summary
            episodes.append(
                dict(
                    path=path,
                    sha256=listed[path.name],
                    transitions=transitions,
                    segment=segment,
                    summary=summary,
                    recovered=recovered,
                )
            )
    if not episodes:
        where = ", ".join(map(str, folders))
        robots = sorted(m.parent for f in folders for m in Path(f).glob(f"*/{MANIFEST}"))
        fix = f"give a robot's log folder, e.g. --data {robots[0]}" if robots else "record episodes first"
        raise MinariExportError(
            f"no verified segment in {where}" + (f" ({problems[0]})" if problems else "") + f": {fix}"
        )
    if len(tasks) != 1:
        raise MinariExportError(
            f"the segments were recorded for several tasks ({', '.join(sorted(map(str, tasks)))}): give --task to "
            "export one of them"
        )
    return tasks.pop(), episodes, problems


def episode_buffer(task, episode: dict):
    """One Minari EpisodeBuffer from a segment's transitions."""
    from minari.data_collector import EpisodeBuffer

    steps = episode["transitions"]
    last = np.asarray(steps[-1]["next_state"], dtype=np.float64)
    observations = [np.asarray(s["obs"], dtype=np.float64) for s in steps] + [task.obs(last)]
    actions = [np.asarray(s["action"], dtype=np.float32) for s in steps]
    rewards = [-float(s["cost"]) for s in steps]
    return EpisodeBuffer(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminations=[False] * len(steps),
        truncations=[False] * (len(steps) - 1) + [True],
    )


def episode_metadata(episode: dict) -> dict:
    """What Minari keeps beside an episode: strings and numbers (None as "")."""
    segment, path = episode["segment"], episode["path"]
    return dict(
        segment=f"{path.parent.name}/{path.name}",
        segment_sha256=episode["sha256"],
        robot=str(segment.get("robot") or ""),
        task=str(segment.get("task") or ""),
        model_sha256=str(segment.get("model_sha256") or ""),
        mppi=json.dumps(segment.get("mppi") or {}, sort_keys=True),
        backend=str(segment.get("backend") or ""),
        code_version=str(segment.get("code_version") or ""),
        seed=int(segment.get("seed") or 0),
        episode=int(segment.get("episode") or 0),
        mode=str(segment.get("mode") or ""),
        # cut short: stopped (Ctrl-C, SIGTERM) or by an error; recovered after a crash; a safe stop says why
        interrupted=bool(episode["summary"].get("interrupted") or episode["recovered"]),
        recovered=episode["recovered"],
        safe_stop=str(episode["summary"].get("safe_stop") or ""),
    )


def export_minari(folders: list[Path], name: str, author: str = "", log=print, task: str | None = None):
    """The Minari dataset `name` from the verified segments of `folders` (only `task`'s, where given); returns it."""
    import gymnasium
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage.datasets_root_dir import get_dataset_path

    import offboard.gym_env as gym_env

    usable = DATASET_ID.fullmatch(name) is not None  # checked before anything is written: Minari makes the
    usable = usable and not any(re.search(r"-v[0-9]+$", part) for part in name.split("/")[:-1])  # not in a dataset
    try:  # dataset's folder first and parses its id after
        usable = usable and parse_dataset_id(name) is not None
    except (ValueError, TypeError):
        usable = False
    if not usable:
        raise MinariExportError(
            f"--name {name}: use NAMESPACE/NAME-vN (letters, digits, - and _), e.g. mpq/pendulum/sim-v0"
        )
    try:
        where = get_dataset_path(name)
    except OSError as e:  # Minari makes its datasets folder first
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise MinariExportError(
            f"Minari's datasets folder {root} cannot be used ({e.strerror}): set MINARI_DATASETS_PATH to a folder"
        ) from None
    if where.exists():
        raise MinariExportError(
            f"a Minari dataset {name!r} exists already: choose another --name, or delete it (minari delete {name})"
        )
    task_name, episodes, problems = episodes_from_segments(folders, task)
    for problem in problems:
        log(f"left out: {problem}")
    task = get_task(task_name)
    buffers = [episode_buffer(task, episode) for episode in episodes]  # everything read before anything is written
    observation_space, action_space = gym_env.spaces_for(task)
    robots = sorted({str(e["segment"].get("robot")) for e in episodes})
    try:
        with warnings.catch_warnings():  # Minari's advice for datasets published on its server (emails, links)
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            dataset = minari.create_dataset_from_buffers(
                name,
                buffers,
                env=gymnasium.spec(gym_env.env_id(task_name)),
                eval_env=gymnasium.spec(gym_env.env_id(task_name, "mujoco")),  # evaluating a policy: the fast one
                observation_space=observation_space,
                action_space=action_space,
                algorithm_name="mpq onboard loop (MPPI; a learned soft Q where an episode's model_sha256 names one)",
                author=author or "mpq",
                author_email="",
                code_permalink="",
                description=(
                    f"{len(episodes)} verified episodes of task {task_name} from robot(s) {', '.join(robots)}, "
                    "recorded by mpq's onboard loop; rewards are minus the task's costs. Each episode's metadata "
                    "names its segment, model and MPPI settings."
                ),
            )
        dataset.storage.update_episode_metadata([episode_metadata(e) for e in episodes])
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)  # no half-written dataset left behind
        raise
    return dataset


# --- command line (python -m offboard export-minari) ----------------------------------------------
def add_command(sub) -> None:
    e = sub.add_parser("export-minari", help="a robot's verified segments as a Minari dataset (offline RL)")
    e.add_argument("--data", nargs="+", required=True, type=Path, help="robot log folders, e.g. data/sim")
    e.add_argument("--name", required=True, help="the dataset's id, e.g. mpq/pendulum/sim-v0")
    e.add_argument("--author", default="", help="who recorded it (Minari's author field)")
    e.add_argument("--task", choices=sorted(TASKS), help="only this task's segments (default: the folders' one task)")
    e.set_defaults(run=run_command)


def run_command(args) -> int:
    try:
        import minari  # noqa: F401
    except ImportError:
        raise MinariExportError(
            "export-minari needs Minari: make setup (the gym extra installs minari[hdf5])"
        ) from None
    for folder in args.data:
        if not folder.is_dir():
            raise MinariExportError(f"--data {folder} is not a folder: give a robot log folder such as data/sim")
    dataset = export_minari(
        args.data, args.name, args.author, log=lambda line: print(line, file=sys.stderr), task=args.task
    )
    print(f"exported {dataset.total_episodes} episode(s) ({dataset.total_steps} steps) as Minari dataset {args.name}")
    return 0
