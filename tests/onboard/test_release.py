"""The robot side of a release: venvs shared by robots on one computer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
