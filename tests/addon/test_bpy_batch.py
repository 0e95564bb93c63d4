"""Batch rendering as an artist runs it (issue 14 item 4): prompts x camera rigs, one folder per pair named
after the prompt, rig and frames, nothing overwritten without asking, and a summary, pressed through the
operators against the scripted backend (background mode, as in `blender -b shot.blend --python-expr ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

PROMPTS = ("a marble statue", "Fauvism", "painting, oil on canvas, Vincent van gogh self-portrait style")
RIGS = {"Front Rig": ("Front", "Left"), "Orbit": ("Orbit 1", "Orbit 2", "Orbit 3")}


def make_rigs(scene) -> bpy.types.Collection:
    """A 'Rigs' collection holding two rig collections of cameras, as an artist lays out a shot."""
    parent = bpy.data.collections.new("Rigs")
    scene.collection.children.link(parent)
    for rig_name, cams in RIGS.items():
        rig = bpy.data.collections.new(rig_name)
        parent.children.link(rig)
        for i, name in enumerate(cams):
            cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
            cam.location = (float(i), -4.0, 0.0)
            cam.rotation_euler = (1.5708, 0.0, 0.0)
            rig.objects.link(cam)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 16, 12, 100
    return parent


@pytest.fixture()
def shot(connected, tmp_path):
    """A reconstructed capture, three queued prompts, two rigs and an output folder."""
    scene = bpy.context.scene
    (tmp_path / "capture").mkdir()
    scene.nerfart.capture.folder = str(tmp_path / "capture")
    assert bpy.ops.nerfart.reconstruct() == {"FINISHED"}
    for prompt in PROMPTS:
        scene.nerfart.stylize.prompt = prompt
        assert bpy.ops.nerfart.queue_add() == {"FINISHED"}
    scene.nerfart.outputs.batch_rigs = make_rigs(scene)
    scene.nerfart.outputs.output_dir = str(tmp_path / "renders")
    return scene


def submits(stub, kind: str) -> list:
    return [m for m in stub.of_type("submit") if m.content["kind"] == kind]


def frame_files(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(str(f.relative_to(d)) for f in d.rglob("*.png")) for d in sorted(root.iterdir())
            if d.is_dir()}


def test_three_prompts_by_two_rigs_keep_all_six(shot, stub, tmp_path):
    from nerfart_blender.core.outputs import slug

    scene = shot
    assert bpy.ops.nerfart.batch_render() == {"FINISHED"}
    root = tmp_path / "renders"
    folders = frame_files(root)
    expected = {f"{slug(p)}_{rig.replace(' ', '-')}_f0001": sorted(f"{c.replace(' ', '_')}/frame_0001.png"
                                                                     for c in cams)
                for p in PROMPTS for rig, cams in RIGS.items()}
    assert folders == expected  # 6 folders, each with every camera of its rig: nothing overwritten
    assert len(submits(stub, "stylize")) == 3 and len(submits(stub, "render")) == 6
    # Each prompt's renders come from that prompt's stylization.
    by_id = {m.content["params"]["prompt"]: m for m in submits(stub, "stylize")}
    assert set(by_id) == set(PROMPTS)
    # The summary: JSON for tools, a table for people, both next to the folders.
    text_path = Path(scene.nerfart.outputs.batch_summary)
    assert text_path.parent == root and text_path.suffix == ".txt"
    summary = json.loads(text_path.with_suffix(".json").read_text())
    assert summary["counts"] == {"done": 6} and summary["prompts"] == list(PROMPTS)
    assert {(r["prompt"], r["rig"], r["files"], r["state"]) for r in summary["renders"]} == \
        {(p, rig, len(cams), "done") for p in PROMPTS for rig, cams in RIGS.items()}
    assert all((root / r["folder"]).is_dir() and r["frames"] == "1" for r in summary["renders"])
    render_ids = {r["render_job"] for r in summary["renders"]}
    assert len(render_ids) == 6 and "" not in render_ids
    assert {r["stylize_job"] for r in summary["renders"]} == {ref.job_id for ref in scene.nerfart.backend.jobs
                                                            if ref.kind == "STYLIZE"}
    table = text_path.read_text().splitlines()
    assert table[0].startswith("NeRF-Art batch: 6 render(s), 6 done")
    assert [c.strip() for c in table[2].split(" | ")][:3] == ["prompt", "rig", "frames"] and len(table) == 4 + 6
    assert [q.state for q in scene.nerfart.stylize.queue] == ["done"] * 3


def test_a_second_batch_asks_before_replacing(shot, stub, tmp_path):
    assert bpy.ops.nerfart.batch_render() == {"FINISHED"}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "renders").rglob("*.png")}
    n_submits = len(stub.of_type("submit"))
    with pytest.raises(RuntimeError, match=r"6 of its 6 folders hold earlier renders.*overwrite=True"):
        bpy.ops.nerfart.batch_render()
    assert len(stub.of_type("submit")) == n_submits  # refused before anything was sent
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "renders").rglob("*.png")} == before
    # Confirmed: the stylizations are reused (their queue entries are done), only the renders run again.
    assert bpy.ops.nerfart.batch_render(overwrite=True) == {"FINISHED"}
    assert len(submits(stub, "stylize")) == 3 and len(submits(stub, "render")) == 12
    assert len(list((tmp_path / "renders").glob("batch_*.txt"))) == 2  # no summary overwrites another
    assert len(list((tmp_path / "renders").rglob("*.png"))) == len(before)


def test_headless_batch_with_named_prompts_and_rigs(shot, stub, tmp_path):
    """What `blender -b shot.blend --python-expr "...bpy.ops.nerfart.batch_render(prompts=..., rigs=...)"`
    runs: prompts and rigs by name, the new prompts joining the queue."""
    scene = shot
    scene.nerfart.stylize.shape_freedom = 0.25  # the current settings, which new prompts join the queue with
    assert bpy.ops.nerfart.batch_render(prompts="a pencil sketch | Tolkien Elf\nFauvism", rigs="Orbit") == \
        {"FINISHED"}
    assert sorted(frame_files(tmp_path / "renders")) == ["a-pencil-sketch_Orbit_f0001", "fauvism_Orbit_f0001",
                                                         "tolkien-elf_Orbit_f0001"]
    assert [q.name for q in scene.nerfart.stylize.queue][-2:] == ["a pencil sketch", "Tolkien Elf"]
    sent = {m.content["params"]["prompt"]: m.content["params"] for m in submits(stub, "stylize")}
    assert {p: sent[p].get("shape_freedom") for p in ("a pencil sketch", "Tolkien Elf", "Fauvism")} == \
        {"a pencil sketch": 0.25, "Tolkien Elf": 0.25, "Fauvism": None}  # Fauvism was queued before, with 0
    with pytest.raises(RuntimeError, match="no collection named 'Nowhere'"):
        bpy.ops.nerfart.batch_render(rigs="Orbit, Nowhere")


def test_a_failed_stylization_fails_its_renders_only(shot, stub, tmp_path):
    scene = shot
    scene.nerfart.stylize.queue[1].name = "please FAIL"
    with pytest.raises(RuntimeError, match=r"batch: 4 of 6 render\(s\) done, 2 failed.*the stub was asked to fail"):
        bpy.ops.nerfart.batch_render()
    summary = json.loads(Path(scene.nerfart.outputs.batch_summary).with_suffix(".json").read_text())
    failed = [r for r in summary["renders"] if r["state"] == "failed"]
    assert {r["prompt"] for r in failed} == {"please FAIL"} and len(failed) == 2
    assert all("its stylization failed: the stub was asked to fail" in r["error"] for r in failed)
    assert len(frame_files(tmp_path / "renders")) == 4


def test_single_renders_of_other_prompts_keep_their_frames(shot, stub, tmp_path):
    """The reported loss: renders of several prompts through one rig went into one folder. Now each prompt's
    render has its own, and the same render again is refused unless confirmed."""
    scene = shot
    out = scene.nerfart.outputs
    out.mode, out.rig = "RIG", bpy.data.collections["Front Rig"]
    for prompt in PROMPTS[:2]:
        scene.nerfart.stylize.prompt = prompt
        assert bpy.ops.nerfart.stylize() == {"FINISHED"}
        assert bpy.ops.nerfart.render() == {"FINISHED"}  # Render From: the latest stylization
    assert sorted(frame_files(tmp_path / "renders")) == ["a-marble-statue_Front-Rig_f0001",
                                                         "fauvism_Front-Rig_f0001"]
    with pytest.raises(RuntimeError, match="already holds 2 file"):
        bpy.ops.nerfart.render()
    assert bpy.ops.nerfart.render(overwrite=True) == {"FINISHED"}
    scene.frame_set(7)
    assert bpy.ops.nerfart.render() == {"FINISHED"}  # another frame: another folder
    assert "fauvism_Front-Rig_f0007" in frame_files(tmp_path / "renders")


def test_in_the_ui_the_timer_drives_the_batch(connected, shot, stub, tmp_path):
    """With a window the operator only sends the stylizations; the timer's ticks submit each prompt's renders
    when its stylization is done and write the summary at the end (the same calls, without blocking)."""
    from conftest import pump
    from nerfart_blender import batch_bpy

    addon = connected
    scene = bpy.context.scene
    batch = batch_bpy.plan(scene, batch_bpy.prompts_of(scene, []), batch_bpy.rigs_of(scene, []))
    stub.hold.set()  # the stylizations stay running: nothing can be rendered yet
    batch_bpy.start(scene, batch)
    pump(addon, lambda: len(submits(stub, "stylize")) == 3)
    rt = bpy.context.window_manager.nerfart_runtime
    assert rt.batch_text == "batch: 0 of 6 render(s) done" and not submits(stub, "render")
    stub.hold.clear()
    pump(addon, lambda: batch.finished)
    assert len(submits(stub, "render")) == 6 and batch.summary is not None
    assert batch_bpy.running() == [] and len(frame_files(tmp_path / "renders")) == 6
    addon.tick.tick()
    # Issue 19: the panel and status bar say the batch is done, how it went and where its outputs are.
    assert rt.batch_text == (f"Batch finished: 6 render(s) done; outputs in {tmp_path / 'renders'} "
                             f"(summary {batch.summary[1].name})")
    assert scene.nerfart.outputs.batch_summary == str(batch.summary[1])
