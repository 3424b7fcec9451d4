"""replay: a logged episode as a video whose frames follow the logged states."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.long
def test_a_logged_episode_replays_as_a_video_whose_frames_follow_the_states(tmp_path, capsys):
    import imageio.v2 as imageio

    from offboard.__main__ import main
    from offboard.replay import frames, read_episode
    from onboard.loop import run
    from onboard.profile import load_profile

    run(load_profile("sim", log_dir=str(tmp_path / "data")), 1, show_status=False)
    (segment,) = sorted((tmp_path / "data" / "sim").glob("*.mcap"))
    task, _, topics = read_episode(segment)
    images = list(frames(task, topics, 64, 48))
    assert len(images) == len(topics["/transition"]) + 1 and images[0].shape == (48, 64, 3)
    moved = [np.abs(a.astype(int) - b.astype(int)).sum() for a, b in zip(images[:-1], images[1:], strict=True)]
    assert sum(m > 0 for m in moved) > len(moved) // 2  # the pendulum swings: most frames differ from the last
    out = tmp_path / "episode.mp4"
    assert main(["replay", str(segment), "--out", str(out), "--width", "64", "--height", "48"]) == 0
    assert "201 frames" in capsys.readouterr().out
    assert imageio.get_reader(out).count_frames() == 201 and not list(tmp_path.glob("*.partial*"))
    assert main(["replay", str(segment), "--out", str(out / "under_a_file.mp4")]) == 2  # out is a file now
    assert f"{out} is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "taken.mp4").mkdir()  # a folder where the video would go: one line, before any frame is drawn
    assert main(["replay", str(segment), "--out", str(tmp_path / "taken.mp4")]) == 2
    assert "taken.mp4 is a folder: give the video's file" in capsys.readouterr().err
    big = tmp_path / "big.mp4"  # past the MJCF's offscreen framebuffer: one line, before anything is written
    assert main(["replay", str(segment), "--out", str(big), "--width", "648", "--height", "48"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "renders at most 640x480" in err and not big.exists()
    data = bytearray(segment.read_bytes())  # a listed segment that no longer matches MANIFEST: refused
    data[100] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert main(["replay", str(segment), "--out", str(tmp_path / "bad.mp4")]) == 2
    assert "sha256 does not match MANIFEST" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()
