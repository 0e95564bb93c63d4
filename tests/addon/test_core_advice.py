"""What the add-on tells the artist where the backend's facts alone leave them stuck (issue 19 item 7): a tiny
mesh, a backend error in the panel's words, a silent backend, a queued prompt's settings, a finished batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from blender_addon.core.advice import (
    batch_done_text,
    in_panel_words,
    lost_text,
    mesh_warning,
    queued_settings_text,
)
from blender_addon.core.jobs import JobState, Session
from blender_addon.core.results import result_warning

CLIP_MESSAGE = ("CLIP weights 'ViT-B-32' / pretrained 'openai' are not available: not in the Hugging Face cache "
                "and HF_HUB_OFFLINE is set.\nLooked for:\n  - /root/.cache/huggingface/hub/models--x\nProvide them "
                "in one of three ways:\n  1. Run once with network access ...")


def test_a_head_sized_mesh_has_no_warning_and_a_tiny_one_says_why_and_what_to_do():
    assert mesh_warning(40_000) == ""
    w = mesh_warning(16)
    assert w.startswith("Tiny mesh, only 16 vertices") and "reconstruct longer" in w and "Largest Part Only" in w
    assert "empty mesh" in mesh_warning(0)
    assert "Largest Part Only" not in mesh_warning(16, keep_largest=False)
    assert "raise Resolution (now 32)" in mesh_warning(10, resolution=32)


def test_the_mesh_jobs_result_carries_the_warning():
    job = JobState("extract_mesh", "mesh", params={"resolution": 256, "keep_largest_only": True},
                   outputs={"vertices": 16, "faces": 28})
    assert result_warning(job).startswith("Tiny mesh, only 16 vertices")
    job.outputs["vertices"] = 52_000
    assert result_warning(job) == ""
    early = JobState("extract_mesh", "mesh", meta={"mesh_vertices": 3})  # the mesh came, the result not yet
    assert "only 3 vertices" in result_warning(early)


def test_clip_weights_error_names_the_panel_field_and_keeps_the_backends_text():
    text = in_panel_words(CLIP_MESSAGE)
    first = text.splitlines()[0]
    assert "Stylize ▸ CLIP Weights" in first and "checkpoint file" in first and "cache" in first
    assert text.endswith(CLIP_MESSAGE)  # the whole backend message follows, for the backend's admin
    assert in_panel_words("something else") == "something else"


def test_a_failed_job_shows_the_panel_words(tmp_path):
    s = Session()
    job = JobState("stylize", "stylize 'x'", job_id="j1", state="running")
    s.track(job)
    msg = SimpleNamespace(type="result", job_id="j1", parent_id=None,
                          content={"state": "failed", "outputs": {}, "error": {"code": "job_failed",
                                                                               "message": CLIP_MESSAGE}})
    s.apply(msg)
    assert job.error.startswith("The backend has no CLIP weights") and "CLIP Weights" in s.last_error


def test_the_real_backend_clip_message_is_recognised():
    pytest.importorskip("torch")  # backend.stylize imports torch
    from pathlib import Path

    from backend.stylize.weights import WeightsUnavailableError, clip_ways

    exc = WeightsUnavailableError("CLIP weights 'ViT-B-32' / pretrained 'openai'", ["/c/x"], "offline.",
                                  clip_ways("ViT-B-32", "openai", Path("/c")))
    assert "Stylize ▸ CLIP Weights" in in_panel_words(str(exc)).splitlines()[0]


def test_no_surface_error_says_what_to_do_in_the_add_on():
    text = in_panel_words("no surface: the density never exceeds the isolevel 10 inside the box (max density "
                          "2.1); lower the isolevel")
    assert "reconstruct longer" in text.splitlines()[0]


def test_jobs_keep_running_is_said_only_of_a_backend_that_answered():
    assert "jobs go on" in lost_text(answered=True) and "stopped answering" in lost_text(answered=True)
    never = lost_text(answered=False)
    assert "No backend answered" in never and "jobs" not in never
    died = lost_text(answered=True, local_exit="the local backend exited with code 1")
    assert died.startswith("The local backend exited with code 1") and "interrupted" in died
    assert "keep running" not in died


def test_queued_prompt_settings_are_spelled_out():
    item = SimpleNamespace(strength=0.8, iterations=300, colour_only=True, shape_freedom=0.25,
                           clip_model="ViT-B-16", clip_pretrained="openai", source_text="photo",
                           negative_prompts="")
    assert queued_settings_text(item) == "strength 0.80, 300 iterations, colour only, CLIP ViT-B-16/openai"
    item.colour_only = False  # shape freedom is said only where it applies
    assert queued_settings_text(item) == "strength 0.80, 300 iterations, shape freedom 0.25, CLIP ViT-B-16/openai"


def test_batch_done_text_counts_and_says_where():
    assert batch_done_text({"done": 5, "failed": 1}, "/out", "summary.txt") == \
        "Batch finished: 5 render(s) done, 1 failed; outputs in /out (summary summary.txt)"
