"""The wire carries MuJoCo's full physics state in one frame: up to MAX_STATE values, refused beyond."""

from __future__ import annotations

import subprocess
import sys

import pytest

from firmware_bridge.dialect import MAX_STATE
from firmware_bridge.link import Link, LinkError
from firmware_bridge.plant import MujocoPlant


def chain_xml(links: int) -> str:
    """A chain of hinged links: its full physics state is time + links qpos + links qvel."""
    body = ""
    for i in reversed(range(links)):
        body = f'<body pos="0 0 0.1"><joint name="j{i}" type="hinge" axis="0 1 0"/><geom size="0.02"/>{body}</body>'
    return f"""<mujoco><custom><numeric name="control_period" data="0.01"/></custom>
<worldbody>{body}</worldbody><actuator><motor joint="j0"/></actuator></mujoco>"""


def test_a_chain_that_fits_one_frame_is_served_and_a_longer_one_is_refused_in_one_line(tmp_path):
    fits, too_long = (MAX_STATE - 1) // 2, (MAX_STATE - 1) // 2 + 1
    for name, links in (("fits", fits), ("toolong", too_long)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.xml").write_text(chain_xml(links))
    assert MujocoPlant.for_task("fits", tmp_path).state_dim == 1 + 2 * fits <= MAX_STATE
    assert MujocoPlant.for_task("toolong", tmp_path).state_dim == 1 + 2 * too_long > MAX_STATE
    out = subprocess.run(
        [sys.executable, "-m", "firmware_bridge.standin", "--task", "toolong", "--models", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"its state has {1 + 2 * too_long} values, at most {MAX_STATE} fit one frame" in out.stderr


def test_the_host_refuses_a_state_larger_than_one_frame_before_opening_the_port():
    with pytest.raises(LinkError, match=f"a state of {MAX_STATE + 1} values .* at most {MAX_STATE}"):
        Link("loop://", "big", MAX_STATE + 1, 1)
