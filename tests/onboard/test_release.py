"""The robot side of a release: its venvs, built once and shared, and removed with the last release using them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from onboard.release import KEEP_RELEASES, ensure_venv, prune_releases, venv_path

ROOT = Path(__file__).resolve().parents[2]


def test_two_deploys_needing_the_same_venv_build_it_once(tmp_path):
    """Two robots on one computer with one `venv_dir`: the second waits for the first's venv and uses it."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")  # nothing to install: the venv itself is what is raced for
    venv = tmp_path / "venvs" / "abc123"
    build = (
        "from pathlib import Path; from onboard.release import ensure_venv; "
        f"ensure_venv(Path({str(venv)!r}), Path({str(requirements)!r}))"
    )
    deploys = [
        subprocess.Popen(
            [sys.executable, "-c", build], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [deploy.communicate(timeout=120) for deploy in deploys]
    assert [deploy.returncode for deploy in deploys] == [0, 0], outputs
    assert sum(out.count("creating") for out, _ in outputs) == 1, outputs
    assert (venv / ".mpq-complete").exists() and (venv / "bin" / "python").exists()


def test_pruning_keeps_the_newest_releases_and_their_venvs_and_removes_the_rest(tmp_path):
    remote_dir = tmp_path / "robot"
    history = [f"r{i}" for i in range(KEEP_RELEASES + 2)]
    for i, release_id in enumerate(history):  # the two oldest releases need other onboard dependencies
        release = remote_dir / "releases" / release_id
        release.mkdir(parents=True)
        (release / "RELEASE.json").write_text(json.dumps({"files": {}}))
        (release / "requirements.txt").write_text("mpq[onboard]\n" + ("numpy<2\n" if i < 2 else ""))
    (remote_dir / "current").symlink_to(Path("releases") / history[-1])
    old_venv = venv_path(remote_dir, remote_dir / "releases" / history[0])
    kept_venv = venv_path(remote_dir, remote_dir / "releases" / history[-1])
    empty_requirements = tmp_path / "empty.txt"
    empty_requirements.write_text("")
    for venv in (old_venv, kept_venv):
        ensure_venv(venv, empty_requirements)  # leaves its build lock beside it
    prune_releases(remote_dir, history)
    assert sorted(p.name for p in (remote_dir / "releases").iterdir()) == history[2:]
    assert kept_venv.is_dir() and not old_venv.exists()
    assert sorted(p.name for p in (remote_dir / "venvs").iterdir() if p.is_dir()) == [kept_venv.name]
