"""Uploaded capture zips and the command-line progress bar."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from backend.jobs.uploads import extract_capture_zip
from backend.progress_bar import ProgressBar, format_seconds


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def test_capture_zip_extracts_its_single_top_folder(tmp_path: Path) -> None:
    z = _zip(tmp_path / "c.zip", {"head/transforms.json": b"{}", "head/images/a.png": b"png"})
    root = extract_capture_zip(z, tmp_path / "out")
    assert root == (tmp_path / "out" / "head").resolve()
    assert (root / "images" / "a.png").read_bytes() == b"png"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:\\evil.txt"])
def test_capture_zip_cannot_escape(tmp_path: Path, name: str) -> None:
    z = _zip(tmp_path / "c.zip", {name: b"x"})
    with pytest.raises(ValueError, match="outside"):
        extract_capture_zip(z, tmp_path / "out")
    assert not list(tmp_path.rglob("evil.txt"))


def test_capture_zip_rejects_links_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link"):
        extract_capture_zip(_zip(tmp_path / "l.zip", {"a.txt": b"x"}, link="images/x.png"), tmp_path / "o1")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        extract_capture_zip(tmp_path / "bad.zip", tmp_path / "o2")


def test_progress_bar_logs_stages_and_final_step_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, log_interval_s=3600)
    for i in range(1, 101):
        bar.update("training", i, 100, eta_s=100 - i, values={"psnr": 20.0 + i / 10})
    bar.update("saving", 1, 1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("training") and "1/100" in lines[0] and "ETA 1:39" in lines[0]
    assert "100/100" in lines[1] and "psnr 30" in lines[1]
    assert lines[2].startswith("saving") and len(lines) == 3
    assert format_seconds(3725) == "1:02:05"
