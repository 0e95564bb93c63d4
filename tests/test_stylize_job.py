"""The ``stylize`` job through a live server: reconstruct, stylize (random weights, tiny preset), render, cancel.

Random CLIP and perceptual weights are requested explicitly (``clip_pretrained="random"``), which is the unstyled
test mode: the job must say that its result is not prompt-driven. Missing pretrained weights must fail the job at
once with the weights error's message.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_jobs_live import SIZE, write_sphere_capture
from waits import HANG_S

from backend import cli
from backend.jobs import default_runners
from backend.nerf.checkpoint import load_checkpoint
from backend.server.server import Server
from backend.stylize.subject_render import subject_cells
from captures import OPENGL_TO_OPENCV
from protocol import BackendError, Client, Message

PROMPT = "a marble statue"
# A small random CLIP keeps CPU iterations near a second; the job accepts any open_clip model name.
RANDOM = {"clip_model": "ViT-S-32", "clip_pretrained": "random", "preset": "tiny"}



@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, str]]:
    """A server with the real runners and one finished tiny reconstruction (its job id)."""
    root = tmp_path_factory.mktemp("stylize_live")
    capture = write_sphere_capture(root / "capture")
    srv = Server("tcp://127.0.0.1:*", root / "work", runners=default_runners())
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    assert srv.ready.wait(HANG_S)
    with Client(srv.bound_endpoint) as client:
        job = client.request(Message("submit", {"kind": "reconstruct", "params": {
            "capture_path": str(capture), "preset": "tiny", "steps": 40, "holdout_every": 4}})).content["job_id"]
        result = client.wait_job(job, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
    yield srv, capture, job
    srv.stop()
    thread.join(HANG_S)


def submit(client: Client, params: dict) -> str:
    return client.request(Message("submit", {"kind": "stylize", "params": params})).content["job_id"]


@pytest.mark.slow
def test_stylize_then_render_the_stylized_model(live: tuple[Server, Path, str]) -> None:
    srv, capture, rec_job = live
    with Client(srv.bound_endpoint) as client:
        assert "stylize" in client.handshake()["job_kinds"]
        job = submit(client, {"source_job": rec_job, "prompt": PROMPT, "iterations": 3, **RANDOM})
        progress: list[Message] = []
        result = client.wait_job(job, on_message=progress.append, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
        out = result.content["outputs"]
        stages = [m.content["stage"] for m in progress]
        assert {"loading models", "rendering sources", "stylizing", "done"} <= set(stages)
        steps = [m.content for m in progress if m.content["stage"] == "stylizing"]
        assert [c["step"] for c in steps] == [1, 2, 3], "progress every iteration"
        assert {"total", "directional", "perceptual"} <= set(steps[0]["losses"])  # λ_reg is 0 by default
        assert all(m.content.get("preview") for m in progress if m.content["stage"] == "stylizing")
        # Random weights: said in the messages and in the outputs.
        assert all("NOT driven by the prompt" in c["message"] for c in steps)
        assert out["prompt_driven"] is False and "NOT driven" in out["note"]
        assert out["prompt"] == PROMPT and out["iterations"] == 3 and out["checkpoint"] == "checkpoint.pt"
        job_dir = srv.store.job_dir(job) / "outputs"
        settings = json.loads((job_dir / out["settings"]).read_text())
        assert settings["prompt"] == PROMPT and settings["clip_pretrained"] == "random"
        assert settings["iterations"] == 3 and settings["n_templates"] == 1
        # An ordinary checkpoint: same background and normalization as the reconstruction, new weights.
        sty = load_checkpoint(job_dir / "checkpoint.pt", "cpu")
        rec = load_checkpoint(srv.store.job_dir(rec_job) / "outputs" / "checkpoint.pt", "cpu")
        assert sty.background == rec.background == "matte"
        assert sty.normalization.to_dict() == rec.normalization.to_dict()
        assert not torch.equal(sty.model.field.colour_mlp[0].weight, rec.model.field.colour_mlp[0].weight)

        # The render job takes the stylize job as its source, unchanged.
        meta = json.loads((capture / "transforms.json").read_text())
        c2w = (np.array(meta["frames"][1]["transform_matrix"]) @ OPENGL_TO_OPENCV).tolist()
        cam = {"name": "view1", "frame": 1, "c2w": c2w, "fx": meta["fl_x"], "fy": meta["fl_y"], "cx": meta["cx"],
               "cy": meta["cy"], "width": SIZE, "height": SIZE}
        rjob = client.request(Message("submit", {"kind": "render", "params": {
            "source_job": job, "cameras": [cam]}})).content["job_id"]
        frames: list[Message] = []
        result = client.wait_job(rjob, on_message=lambda m: m.type == "frame" and frames.append(m), timeout_s=HANG_S)
        assert result.content["state"] == "done" and len(frames) == 1
        img = np.asarray(Image.open(io.BytesIO(bytes(frames[0].blob(frames[0].content["image"]))))) / 255.0
        truth = np.asarray(Image.open(capture / "images" / "001.png")) / 255.0
        assert img.shape == (SIZE, SIZE, 4)
        # Three small steps keep the silhouette of the spheres.
        assert np.abs(img[..., 3] - truth[..., 3]).mean() < 0.15


@pytest.mark.slow
def test_stylize_within_subject_bounds(live: tuple[Server, Path, str]) -> None:
    """params.subject_bounds (capture-world form) reach the loop; the stylized checkpoint keeps them (model
    coordinates) and the outputs give them back with the source job; unusable bounds fail the job at once."""
    from backend.nerf.subject import SubjectBounds

    srv, _, rec_job = live
    rec = load_checkpoint(srv.store.job_dir(rec_job) / "outputs" / "checkpoint.pt", "cpu")
    bounds = SubjectBounds("ellipsoid", np.diag([0.5, 0.6, 0.7, 1.0]))
    world = bounds.to_world(rec.normalization)
    with Client(srv.bound_endpoint) as client:
        job = submit(client, {"source_job": rec_job, "prompt": PROMPT, "iterations": 2, "subject_bounds": world,
                              **RANDOM})
        result = client.wait_job(job, timeout_s=HANG_S)
        assert result.content["state"] == "done", result.content
        out = result.content["outputs"]
        assert out["source_job"] == rec_job and out["subject_bounds"]["shape"] == "ellipsoid"
        np.testing.assert_allclose(out["subject_bounds"]["matrix"], world["matrix"], atol=1e-9)
        sty = load_checkpoint(srv.store.job_dir(job) / "outputs" / "checkpoint.pt", "cpu")
        assert sty.subject is not None and sty.subject.shape == "ellipsoid"
        np.testing.assert_allclose(sty.subject.matrix, bounds.matrix, atol=1e-9)
        settings = json.loads((srv.store.job_dir(job) / "outputs" / "stylize.json").read_text())
        np.testing.assert_allclose(settings["subject_bounds"]["matrix"], world["matrix"], atol=1e-9)

        flat = {"shape": "box", "matrix": np.diag([1.0, 0.0, 1.0, 1.0]).tolist()}
        result = client.wait_job(submit(client, {"source_job": rec_job, "prompt": PROMPT, "subject_bounds": flat,
                                                 **RANDOM}), timeout_s=HANG_S)
        assert result.content["state"] == "failed"
        assert "subject_bounds" in result.content["error"]["message"]
        assert "zero size" in result.content["error"]["message"]


def test_subject_bounds_default_to_the_reconstructions() -> None:
    from types import SimpleNamespace

    from backend.jobs.stylize import subject_for_job, subject_world
    from backend.nerf.subject import SubjectBounds
    from captures.normalize import Normalization

    own = SubjectBounds("box", np.diag([0.4, 0.5, 0.6, 1.0]))
    norm = Normalization(np.array([1.0, 2.0, 3.0]), 2.0)
    rec = SimpleNamespace(subject=own, normalization=norm)
    assert subject_for_job({}, rec) is own
    assert subject_for_job({}, SimpleNamespace(subject=None, normalization=norm)) is None
    given = SubjectBounds("ellipsoid", np.diag([0.3, 0.3, 0.3, 1.0]))
    np.testing.assert_allclose(subject_for_job({"subject_bounds": given.to_world(norm)}, rec).matrix, given.matrix)
    np.testing.assert_allclose(subject_world(rec)["matrix"], own.to_world(norm)["matrix"])
    assert subject_world(SimpleNamespace(subject=None, normalization=norm)) is None


@pytest.mark.slow
def test_stylize_failures_are_immediate_and_clear(live: tuple[Server, Path, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    srv, _, rec_job = live
    with Client(srv.bound_endpoint) as client:
        cases = [
            ({"source_job": rec_job, "prompt": "oil painting " * 40, **RANDOM}, "too long for CLIP"),
            ({"source_job": rec_job, "prompt": "  ", **RANDOM}, "prompt is empty"),
            ({"source_job": rec_job, "prompt": PROMPT, "negative_prompts": [PROMPT], **RANDOM},
             "is the target prompt itself"),
            ({"source_job": rec_job, "prompt": PROMPT, **{**RANDOM, "clip_model": "ViT-Q-99"}},
             "unknown CLIP model"),
        ]
        for params, message in cases:
            result = client.wait_job(submit(client, params), timeout_s=HANG_S)
            assert result.content["state"] == "failed", params
            assert message in result.content["error"]["message"], result.content["error"]
        # An unknown source job is refused at submission; a source of the wrong kind fails the job.
        with pytest.raises(BackendError, match="no job"):
            submit(client, {"source_job": "0123456789abcdef", "prompt": PROMPT, **RANDOM})
        failed_src = next(j for j in srv.store.all() if j.kind == "stylize" and j.state == "failed")
        result = client.wait_job(submit(client, {"source_job": failed_src.job_id, "prompt": PROMPT, **RANDOM}),
                                 timeout_s=HANG_S)
        assert "is a stylize job; expected one of reconstruct" in result.content["error"]["message"]

        # Pretrained weights that are not cached and cannot be downloaded: the weights error, within seconds.
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
        # The defaults: ViT-B-32 with OpenAI's weights.
        result = client.wait_job(submit(client, {"source_job": rec_job, "prompt": PROMPT, "preset": "tiny"}),
                                 timeout_s=HANG_S)
        assert result.content["state"] == "failed"
        message = result.content["error"]["message"]
        assert "are not available" in message and "HF_HUB_OFFLINE" in message, message


@pytest.mark.slow
def test_stylize_cancel_keeps_the_latest_state(live: tuple[Server, Path, str]) -> None:
    srv, _, rec_job = live
    with Client(srv.bound_endpoint) as client:
        # shape_freedom 0.2 from the job's parameters reaches the loop: an unfinished run keeps the whole region
        # its rays marched, F_rec's occupied cells grown by 0.2 head radii where they touch the subject bounds
        # the reconstruction decided.
        job = submit(client, {"source_job": rec_job, "prompt": PROMPT, "iterations": 100000, "shape_freedom": 0.2,
                              **RANDOM})
        while not any(m.type == "progress" and m.job_id == job and m.content["stage"] == "stylizing"
                      and m.content["step"] >= 2 for m in client.poll(0.05)):
            pass
        assert client.request(Message("cancel", {"job_id": job})).content["state"] == "running"
        at_cancel = srv.store.get(job).step  # iterations done when the cancel landed (or fewer)
        result = client.wait_job(job, timeout_s=HANG_S)
        assert result.content["state"] == "cancelled"
        ckpt = load_checkpoint(srv.store.job_dir(job) / "outputs" / "checkpoint.pt", "cpu")
        assert ckpt.metrics["cancelled"] == 1 and ckpt.metrics["stylize_iterations"] >= 2
        assert ckpt.metrics["stylize_iterations"] <= at_cancel + 1, "cancel lands within an iteration"
        rec = load_checkpoint(srv.store.job_dir(rec_job) / "outputs" / "checkpoint.pt", "cpu")
        grown = rec.model.occupancy.within_distance(0.2, rec.model.domain)
        assert rec.subject is not None, "a reconstruct job decides subject bounds"
        inside = subject_cells(rec.subject, rec.model.occupancy.resolution, rec.model.domain)
        grown = rec.model.occupancy.binary | (grown & inside)
        assert int(grown.sum()) > int(rec.model.occupancy.binary.sum()), "the test needs cells to grow into"
        assert torch.equal(ckpt.model.occupancy.binary, grown)
        settings = json.loads((srv.store.job_dir(job) / "outputs" / "stylize.json").read_text())
        assert settings["shape_freedom"] == 0.2 and settings["colour_only"] is False


def test_job_parameters_reach_the_stylize_config() -> None:
    from backend.jobs.stylize import config_from_params

    base = {"source_job": "abc123", "prompt": PROMPT, "preset": "tiny"}
    assert config_from_params(base).shape_freedom == 0  # the default keeps the head
    config = config_from_params({**base, "shape_freedom": 0.25, "strength": 0.8})
    assert config.shape_freedom == 0.25 and not config.colour_only and config.strength == 0.8
    # With colour_only the setting is kept in the config (and stylize.json) but the loop ignores it.
    config = config_from_params({**base, "shape_freedom": 0.25, "colour_only": True})
    assert config.shape_freedom == 0.25 and config.colour_only


def test_cli_stylize_builds_the_job_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def fake_run_local(kind: str, params: dict, args) -> tuple[int, dict]:
        seen.update(kind=kind, params=params, device=args.device)
        return 0, {}

    monkeypatch.setattr(cli, "_run_local", fake_run_local)
    code = cli.main(["stylize", "abc123", "--prompt", PROMPT, "--negative", "photo", "--negative", "selfie",
                     "--strength", "0.8", "--colour-only", "--shape-freedom", "0.25", "--clip-pretrained", "random",
                     "--preset", "tiny", "--scale", "0.25", "--seed", "3", "--device", "cpu"])
    assert code == 0 and seen["kind"] == "stylize" and seen["device"] == "cpu"
    assert seen["params"] == {"source_job": "abc123", "prompt": PROMPT, "negative_prompts": ["photo", "selfie"],
                              "strength": 0.8, "colour_only": True, "clip_pretrained": "random", "preset": "tiny",
                              "scale": 0.25, "seed": 3, "shape_freedom": 0.25}
    from protocol import validate_params

    validate_params("stylize", seen["params"])  # what the CLI builds passes the protocol's schema


def test_cli_stylize_shape_freedom_reaches_the_job_record(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--shape-freedom F lands in the job's parameters only when given; an out-of-range F is refused by the
    protocol's check before any job exists. (The source job does not exist, so the jobs fail at once.)"""
    work = tmp_path / "work"
    common = ["--prompt", PROMPT, "--clip-model", "ViT-S-32", "--clip-pretrained", "random", "--preset", "tiny",
              "--work-dir", str(work), "--device", "cpu"]

    def records() -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(work.glob("jobs/*/job.json"))]

    assert cli.main(["stylize", "no-such-job", "--shape-freedom", "0.25", *common]) == 1
    (first,) = records()
    assert first["params"]["shape_freedom"] == 0.25 and "colour_only" not in first["params"]
    assert cli.main(["stylize", "no-such-job", *common]) == 1
    assert sum("shape_freedom" in r["params"] for r in records()) == 1, "not sent unless given"
    capsys.readouterr()
    assert cli.main(["stylize", "no-such-job", "--shape-freedom", "0.75", *common]) == 2
    assert "error: field 'params.shape_freedom' must be at most 0.5, got 0.75" in capsys.readouterr().err
    assert len(records()) == 2, "refused before a job was created"
