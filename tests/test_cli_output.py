"""What the job commands print: the finished job's id alone on stdout (as the README says, so that scripts can
chain them), its record as JSON with --json, and a readable summary with metrics and warnings on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_jobs_live import write_sphere_capture

from backend import cli

RANDOM_CLIP = ["--clip-model", "ViT-S-32", "--clip-pretrained", "random", "--preset", "tiny", "--iterations", "2"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_job_commands_print_the_job_id_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = write_sphere_capture(tmp_path / "capture", n_views=6)
    work = ["--work-dir", str(tmp_path / "work"), "--device", "cpu"]
    code, out, err = run(capsys, "reconstruct", str(capture), "--preset", "tiny", "--steps", "6",
                         "--holdout-every", "3", *work)
    assert code == 0
    job = out.strip()
    assert out == job + "\n" and (tmp_path / "work" / "jobs" / job / "job.json").is_file()
    assert f"reconstruct job {job} done: PSNR " in err and "held-out PSNR" in err
    assert str(tmp_path / "work" / "jobs" / job / "outputs") in err

    # stylize prints its own id the same way; a random-CLIP result says loudly that the prompt did not drive it.
    code, out, err = run(capsys, "stylize", job, "--prompt", "a marble statue", *RANDOM_CLIP, *work)
    assert code == 0
    styled = out.strip()
    assert out == styled + "\n" and styled != job
    assert f"stylize job {styled} done: style loss " in err
    assert "warning: random CLIP" in err and "NOT driven by the prompt" in err

    # --json: the whole record, for tools.
    code, out, _ = run(capsys, "mesh", job, "--format", "ply", "--resolution", "16", "--isolevel", "0.01", "--json",
                       *work)
    record = json.loads(out)
    assert code == 0 and record["job_id"] not in (job, styled) and record["outputs"]["mesh"].endswith(".ply")

    # A failure prints nothing on stdout (a script's $(...) gets nothing) and says why on stderr.
    code, out, err = run(capsys, "stylize", "no-such-job", "--prompt", "x", *RANDOM_CLIP, *work)
    assert code == 1 and out == "" and "no-such-job" in err
