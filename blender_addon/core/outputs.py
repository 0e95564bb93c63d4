"""Where renders go and what a batch leaves behind. Pure Python.

Every render job writes into its own folder named after what it rendered, ``<prompt>_<rig>_<frames>``
(e.g. ``a-marble-statue_Turntable_f0001-0120``), so renders of other prompts, rigs or frame ranges never land
on each other; rendering the same thing again finds the folder full and must ask before replacing it. A batch
writes a summary of all its renders next to their folders, as JSON (for tools) and as a table (for people).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SLUG_MAX = 40
FRAME_SUFFIXES = (".png", ".exr")


def slug(text: str, lower: bool = True, max_len: int = SLUG_MAX) -> str:
    """``text`` as a file name part: letters, digits and single dashes (``'Painting, oil!'`` ->
    ``'painting-oil'``). A longer text is cut and gets 6 hex digits of its hash, so two long prompts that
    differ only at the end still get two folders."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", text.lower() if lower else text).strip("-") or "untitled"
    if len(base) <= max_len:
        return base
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    return f"{base[:max_len - 7].rstrip('-')}-{digest}"


def frames_tag(frames: Sequence[int]) -> str:
    """``[1, 2, 3]`` -> ``f0001-0003``; ``[5]`` -> ``f0005``; ``[1, 3, 5]`` -> ``f0001-0005x2``; negative
    frames as ``m0003``."""
    if not frames:
        raise ValueError("no frames to render")

    def one(f: int) -> str:
        return f"{f:04d}" if f >= 0 else f"m{-f:04d}"

    first, last = min(frames), max(frames)
    if first == last:
        return f"f{one(first)}"
    step = _step(frames)
    return f"f{one(first)}-{one(last)}" + (f"x{step}" if step > 1 else "")


def _step(frames: Sequence[int]) -> int:
    """The step of an evenly spaced frame list (1 for uneven ones, which frame_range never makes)."""
    ordered = sorted(set(frames))
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    return steps.pop() if len(steps) == 1 else 1


def render_folder_name(source: str, cameras: str, frames: Sequence[int]) -> str:
    """The folder of one render job: the prompt (or ``reconstruction``), the rig or camera, the frames."""
    return f"{slug(source)}_{slug(cameras, lower=False)}_{frames_tag(frames)}"


def existing_files(folder: Path) -> int:
    """How many files ``folder`` holds already (recursively; 0 when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file())


def remove_frames(folder: Path) -> int:
    """Delete the frame files an earlier render left in ``folder`` (``frame_*.png|exr``, also in camera
    sub-folders), so that a replacing render does not mix with them. Other files stay. Returns how many."""
    removed = 0
    if folder.is_dir():
        for path in folder.rglob("frame_*"):
            if path.is_file() and path.suffix in FRAME_SUFFIXES:
                path.unlink()
                removed += 1
    return removed


def frame_range_text(frames: Sequence[int]) -> str:
    """``1-120`` (or ``5``, ``1-119 step 2``) for tables."""
    first, last = min(frames), max(frames)
    if first == last:
        return str(first)
    step = _step(frames)
    return f"{first}-{last}" + (f" step {step}" if step > 1 else "")


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The batch summary as a fixed-width text table, one line per render."""
    columns = (("prompt", "prompt"), ("rig", "rig"), ("frames", "frames"), ("files", "files"),
               ("state", "state"), ("folder", "folder"))
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max([len(title), *(len(c[i]) for c in cells)]) for i, (_, title) in enumerate(columns)]
    lines = [" | ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)).rstrip(),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def write_summary(root: Path, summary: dict[str, Any], stamp: float | None = None) -> tuple[Path, Path]:
    """Write ``summary`` (with its ``renders`` rows) as ``batch_<date>-<time>.json`` and ``.txt`` in ``root``,
    never over an earlier summary. Returns both paths."""
    root.mkdir(parents=True, exist_ok=True)
    base = time.strftime("batch_%Y%m%d-%H%M%S", time.localtime(stamp))
    name, n = base, 1
    while (root / f"{name}.json").exists() or (root / f"{name}.txt").exists():
        n += 1
        name = f"{base}-{n}"
    json_path, text_path = root / f"{name}.json", root / f"{name}.txt"
    json_path.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    done = sum(1 for r in summary["renders"] if r.get("state") == "done")
    header = (f"NeRF-Art batch: {len(summary['renders'])} render(s), {done} done; output folder "
              f"{summary.get('output_folder', root)}\n\n")
    text_path.write_text(header + summary_table(summary["renders"]), encoding="utf-8")
    return json_path, text_path
