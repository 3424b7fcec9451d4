"""The Foxglove layout shipped in tools/foxglove plots only fields the recorder writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from onboard.recorder import CHANNELS

LAYOUT = Path(__file__).resolve().parents[1] / "tools" / "foxglove" / "segment_layout.json"


def panel_ids(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    return panel_ids(node["first"]) + panel_ids(node["second"])


def test_every_plotted_path_is_a_recorded_topic_and_field_and_every_panel_is_placed():
    layout = json.loads(LAYOUT.read_text())
    assert sorted(panel_ids(layout["layout"])) == sorted(layout["configById"])
    plotted = set()
    for panel in layout["configById"].values():
        for path in panel["paths"]:
            topic, field, index = re.fullmatch(r"(/\w+)\.(\w+)(\[\d+\])?", path["value"]).groups()
            schema = CHANNELS[topic]["properties"][field]
            assert (index is not None) == (schema["type"] == "array"), path["value"]
            plotted.add((topic, field))
    assert {
        ("/transition", "state"),
        ("/transition", "action"),
        ("/transition", "cost"),
        ("/mppi", "compute_ms"),
        ("/mppi", "ess"),
        ("/link", "rtt_us"),
        ("/link", "crc_errors"),
    } <= plotted
