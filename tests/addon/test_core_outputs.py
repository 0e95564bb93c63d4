"""Output folder names and batch summaries (plain Python, no Blender)."""

from __future__ import annotations

import json

import pytest

from blender_addon.core.outputs import (
    frames_tag,
    remove_frames,
    render_folder_name,
    slug,
    summary_table,
    write_summary,
)


def test_folder_names_say_prompt_rig_and_frames():
    assert render_folder_name("A marble statue!", "Turntable Rig", [1, 2, 3]) == \
        "a-marble-statue_Turntable-Rig_f0001-0003"
    assert render_folder_name("reconstruction", "Cam", [12]) == "reconstruction_Cam_f0012"
    assert frames_tag([1, 3, 5, 7]) == "f0001-0007x2" and frames_tag([-3, -2]) == "fm0003-m0002"
    with pytest.raises(ValueError, match="no frames"):
        frames_tag([])


def test_long_prompts_stay_apart():
    a = slug("painting, oil on canvas, Vincent van gogh self-portrait style, warm light")
    b = slug("painting, oil on canvas, Vincent van gogh self-portrait style, cold light")
    assert a != b and len(a) == len(b) == 40 and a.startswith("painting-oil-on-canvas")
    assert slug("!!!") == "untitled"


def test_summary_files_never_replace_each_other(tmp_path):
    rows = [{"prompt": "Fauvism", "rig": "Orbit", "frames": "1-3", "files": 9, "state": "done",
             "folder": "fauvism_Orbit_f0001-0003"}]
    first = write_summary(tmp_path, {"renders": rows, "output_folder": str(tmp_path)}, stamp=0.0)
    second = write_summary(tmp_path, {"renders": rows, "output_folder": str(tmp_path)}, stamp=0.0)
    assert first != second and all(p.is_file() for p in (*first, *second))
    assert json.loads(first[0].read_text())["renders"] == rows
    table = summary_table(rows).splitlines()
    assert table[0].split(" | ")[0].strip() == "prompt" and "fauvism_Orbit_f0001-0003" in table[2]


def test_replacing_a_render_removes_only_its_frames(tmp_path):
    (tmp_path / "Cam").mkdir()
    for name in ("frame_0001.png", "Cam/frame_0002.exr", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_frames(tmp_path) == 2 and [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["notes.txt"]
