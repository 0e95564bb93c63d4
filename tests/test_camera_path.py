"""Camera paths to render: nerfstudio camera_path.json and protocol camera lists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from backend.jobs.camera_path import load_camera_path
from captures import CaptureError, project_points


def test_nerfstudio_camera_path_projects_like_its_fov(tmp_path: Path) -> None:
    # An OpenGL camera at z=5 looking down -Z at the origin, vertical fov 60 degrees, 320x240.
    c2w = np.eye(4)
    c2w[2, 3] = 5.0
    path = {"render_width": 320, "render_height": 240, "camera_type": "perspective",
            "camera_path": [{"camera_to_world": c2w.ravel().tolist(), "fov": 60.0, "aspect": 320 / 240}]}
    (tmp_path / "p.json").write_text(json.dumps(path))
    cams, frames = load_camera_path(tmp_path / "p.json")
    assert frames == [0] and cams.width[0] == 320 and cams.height[0] == 240
    # The point at the top edge of the vertical fov (y up in OpenGL) projects to the image's top edge.
    top = np.array([[0.0, 5.0 * math.tan(math.radians(30)), 0.0]])
    uv, depth = project_points(cams, 0, top)
    np.testing.assert_allclose(uv[0], [160.0, 0.0], atol=1e-9)
    assert depth[0] == pytest.approx(5.0)


def test_protocol_camera_list(tmp_path: Path) -> None:
    cam = {"name": "Cam", "frame": 7, "c2w": np.eye(4).tolist(), "fx": 100.0, "fy": 100.0, "cx": 50.0,
           "cy": 40.0, "width": 100, "height": 80}
    (tmp_path / "c.json").write_text(json.dumps({"cameras": [cam, {**cam, "frame": 8}]}))
    cams, frames = load_camera_path(tmp_path / "c.json")
    assert frames == [7, 8] and cams.names == ["Cam", "Cam"]
    bad = {**cam, "width": 0}
    (tmp_path / "bad.json").write_text(json.dumps([bad]))
    with pytest.raises(CaptureError, match=r"bad.json: field 'cameras\[0\].width'"):
        load_camera_path(tmp_path / "bad.json")


@pytest.mark.parametrize(("content", "match"), [
    ("{", "not a readable JSON"),
    ('{"camera_path": [], "render_width": 10, "render_height": 10}', "empty"),
    ('{"camera_path": [{"camera_to_world": [1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1], "fov": 0}],'
     ' "render_width": 10, "render_height": 10}', "fov"),
    ('{"camera_path": [{"camera_to_world": [NaN,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1], "fov": 50}],'
     ' "render_width": 10, "render_height": 10}', "non-finite"),
    ("[]", "at least|between 1"),
])
def test_bad_camera_paths_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(CaptureError, match=match):
        load_camera_path(tmp_path / "x.json")
    with pytest.raises(CaptureError, match="not found"):
        load_camera_path(tmp_path / "missing.json")
