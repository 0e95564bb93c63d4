"""Uploaded captures may only read their own files (issue 13.6): absolute, '..' and link paths are refused.

The refusal must not depend on whether the named file exists, nor echo any of its bytes.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from backend.jobs.reconstruct import run_reconstruct
from backend.jobstore.execute import execute_job
from backend.jobstore.store import JobStore
from captures import CaptureError, load_capture

SECRET = b"root:x:0:0:SECRET-CONTENT"
POSES = [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]], [[0, 0, 1, 4], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]],
         [[1, 0, 0, 0], [0, 0, 1, 4], [0, -1, 0, 0], [0, 0, 0, 1]]]  # OpenGL c2w, looking at the origin


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


def _transforms(paths: list[str]) -> bytes:
    frames = [{"file_path": p, "transform_matrix": m} for p, m in zip(paths, POSES, strict=True)]
    return json.dumps({"fl_x": 10.0, "frames": frames}).encode()


def _capture(root: Path, paths: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(3):
        (root / "images" / f"{i}.png").write_bytes(_png())
    (root / "transforms.json").write_bytes(_transforms(paths))
    return root


def _refusal(root: Path, confine_to: Path) -> str:
    with pytest.raises(CaptureError) as info:
        load_capture(root, confine_to=confine_to)
    message = str(info.value)
    assert "SECRET" not in message
    return message


@pytest.mark.parametrize("escape", ["ABS", "../../outside/secret.png", "images/../../../outside/secret.png"])
def test_paths_out_of_the_capture_are_refused_alike_whether_they_exist_or_not(tmp_path: Path, escape: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    name = str(outside / "secret.png") if escape == "ABS" else escape
    root = _capture(tmp_path / "upload" / "cap", ["images/0.png", name, "images/2.png"])
    absent = _refusal(root, tmp_path / "upload")
    (outside / "secret.png").write_bytes(SECRET)  # now it exists (and is not even an image)
    present = _refusal(root, tmp_path / "upload")
    assert absent == present
    assert ("is absolute" if escape == "ABS" else "leaves the capture folder") in present
    assert "frames[1]: image path" in present
    # The same capture read from one's own disk (no confinement) may name such files.
    (outside / "secret.png").write_bytes(_png())
    assert len(load_capture(root)) == 3


def test_a_link_in_the_capture_is_refused_without_following_it(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    root = _capture(tmp_path / "upload", ["images/0.png", "images/1.png", "images/link.png"])
    (root / "images" / "link.png").symlink_to(tmp_path / "outside" / "secret.png")
    absent = _refusal(root, root)
    (tmp_path / "outside" / "secret.png").write_bytes(SECRET)
    assert _refusal(root, root) == absent == ("images/link.png is a link; an uploaded capture's files must lie "
                                               "inside it (no absolute paths, no '..' out of it, no links)")


def test_colmap_image_names_and_mattes_are_confined_too(tmp_path: Path) -> None:
    root = tmp_path / "cap"
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text("1 PINHOLE 8 6 10 10 4 3\n")
    (model / "images.txt").write_text("1 1 0 0 0 0 0 4 1 ../../secret.png\n\n2 1 0 0 0 0 0 5 1 a.png\n\n")
    (model / "points3D.txt").write_text("")
    (root / "images").mkdir()
    with pytest.raises(CaptureError, match=r"image name '\.\./\.\./secret\.png' leaves the capture folder"):
        load_capture(root, confine_to=root)
    # '..' that stays inside the capture is fine: a json beside its images reached from a subfolder.
    sub = _capture(tmp_path / "up2", ["../images/0.png", "../images/1.png", "../images/2.png"])
    (sub / "json").mkdir()
    (sub / "transforms.json").rename(sub / "json" / "transforms.json")
    assert len(load_capture(sub / "json", confine_to=sub)) == 3
    mask = {"fl_x": 10.0, "frames": [{"file_path": f"../images/{i}.png", "mask_path": "/etc/hostname",
                                      "transform_matrix": POSES[i]} for i in range(3)]}
    (sub / "json" / "transforms.json").write_text(json.dumps(mask))
    with pytest.raises(CaptureError, match=r"frames\[0\]: matte path '/etc/hostname' is absolute"):
        load_capture(sub / "json", confine_to=sub)


def test_a_capture_outside_its_confinement_is_refused(tmp_path: Path) -> None:
    root = _capture(tmp_path / "a", ["images/0.png", "images/1.png", "images/2.png"])
    (tmp_path / "b").mkdir()
    with pytest.raises(CaptureError, match="not inside"):
        load_capture(root, confine_to=tmp_path / "b")


def _upload_job(tmp_path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> dict:
    """Run a reconstruct job on an uploaded zip; returns its error."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link[0])
            info.external_attr = 0o120777 << 16
            zf.writestr(info, link[1])
    store = JobStore(tmp_path / "work")
    rec = store.create("reconstruct", {"preset": "tiny"}, "cli", inputs={"capture": (buf.getvalue(), "zip")})
    execute_job(rec, store, run_reconstruct, lambda _msg: None, threading.Event(), "cpu")
    assert rec.state == "failed" and rec.error is not None
    assert "SECRET" not in json.dumps(rec.error)
    return rec.error


@pytest.mark.parametrize("escape", ["/etc/passwd", "../../../../etc/passwd"])
def test_an_uploaded_capture_naming_files_outside_fails_its_job(tmp_path: Path, escape: str) -> None:
    images = {f"cap/images/{i}.png": _png() for i in range(3)}
    error = _upload_job(tmp_path, {**images, "cap/transforms.json": _transforms(["images/0.png", escape,
                                                                                 "images/2.png"])})
    assert f"frames[1]: image path {escape!r}" in error["message"]
    assert ("is absolute" if escape.startswith("/") else "leaves the capture folder") in error["message"]


def test_an_uploaded_link_fails_its_job(tmp_path: Path) -> None:
    images = {f"cap/images/{i}.png": _png() for i in range(2)}
    error = _upload_job(tmp_path, {**images, "cap/transforms.json": _transforms(
        ["images/0.png", "images/1.png", "images/2.png"])}, link=("cap/images/2.png", "/etc/passwd"))
    assert "is a link; links are not accepted" in error["message"]
