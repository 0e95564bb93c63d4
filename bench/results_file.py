"""Where a benchmark's results table goes: ``bench/results/<name>_<gpu slug>_<date>.md``, one naming for all."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_path(name: str, gpu: str, date: str) -> Path:
    """``bench/results/<name>_<gpu>_<date>.md`` with the GPU name as a lowercase slug
    (``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return RESULTS_DIR / f"{name}_{slug}_{date}.md"


def write_results(text: str, out: Path | None, name: str, gpu: str, date: str, smoke: bool) -> None:
    """Print the table and write it: to ``out`` when given, else to :func:`results_path` unless a smoke run
    (smoke runs check the script, their figures are not results)."""
    print(text)
    if smoke and out is None:
        return
    path = out or results_path(name, gpu, date)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
