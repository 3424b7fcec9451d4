"""The import rules (README, "What is in it"; docs/architecture.md): offboard -> onboard -> firmware_bridge, never
back; no torch on the robot; MuJoCo imported only by the MuJoCo backends and the MJCF loader (plant.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(package: str) -> dict[str, set[str]]:
    """Top-level module names each .py file of `package` imports, read from the source."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = roots
    return found


def test_onboard_sources_import_neither_torch_nor_offboard_and_mujoco_only_in_its_backends():
    for path, roots in imported_roots("onboard").items():
        assert not roots & {"torch", "offboard"}, path
        # mujoco only inside the MuJoCo rollout backends (tasks read their MJCF through firmware_bridge)
        if Path(path).name not in ("mujoco_backend.py", "warp_backend.py"):
            assert not roots & {"mujoco", "mujoco_warp", "warp"}, path


def test_firmware_bridge_imports_neither_onboard_nor_offboard():
    for path, roots in imported_roots("firmware_bridge").items():
        assert not roots & {"onboard", "offboard", "torch"}, path


def modules_loaded_by_importing_all_of(*packages: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing every module of the packages."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {list(packages)!r}:\n"
        "    p = importlib.import_module(name)\n"
        "    for m in pkgutil.walk_packages(p.__path__, name + '.'): importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout))


def test_importing_all_of_onboard_loads_no_torch():
    loaded = modules_loaded_by_importing_all_of("onboard")
    assert {"onboard.mppi", "onboard.qfunction", "onboard.backends.c_backend", "onboard.tasks.cartpole"} <= loaded
    assert not {name.split(".")[0] for name in loaded} & {"torch", "offboard", "mujoco_warp", "warp"}


def test_ray_is_imported_only_by_the_paths_past_one_machine_and_only_when_asked():
    """Without the cluster extra every command but --ray works: importing all of offboard and onboard loads no Ray."""
    allowed = {"offboard/target_workers.py", "offboard/fleet.py", "offboard/sweep.py", "offboard/bench_ray.py"}
    for package in ("onboard", "offboard", "firmware_bridge"):
        for path, roots in imported_roots(package).items():
            assert "ray" not in roots or path in allowed, path
    loaded = modules_loaded_by_importing_all_of("offboard", "onboard")
    assert {"offboard.fleet", "offboard.sweep", "offboard.target_workers"} <= loaded
    assert "ray" not in {name.split(".")[0] for name in loaded}


def test_only_train_and_export_load_torch_on_the_workstation():
    """A pull, a deploy or an evaluation starts in about a second: torch (seconds to import) is not loaded for it."""
    code = (
        "import runpy, sys\n"
        "sys.argv = ['offboard', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('offboard', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)"
    )
    for command, loads_torch in (("pull-data", False), ("deploy", False), ("evaluate", False), ("train", True)):
        out = subprocess.run([sys.executable, "-c", code, command, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert out.stdout.splitlines()[-1] == str(loads_torch), (command, out.stderr)
