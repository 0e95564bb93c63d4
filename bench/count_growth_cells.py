"""Where a stylization with Shape Freedom may grow on a real reconstruction (issue 20B): cells, not pictures.

On a reconstruction of fangzhou_nature made without its mattes (a ``ck.pt`` that ``bench/run_on_device.sh issue20``
brings back), take the subject as the reconstruct job does (seen air plus the difference key, ``left_out_cells``),
cut it as the stylize job does (``as_subject``) and count the occupancy cells the stylization may grow into
at each freedom under two rules: only the left-out haze closed (accbde9, reverted) and every left-out cell
closed (:func:`backend.stylize.loop._allowed_cells`, the rule): in all, those F_rec left empty, those holding the
haze the subject left out (must be 0), those above the person's highest cell (where a hat goes), and, for
comparison, what growth could reach with nothing left out. No rendering of the stylization: a CPU figure in
seconds once the detection and the key's plates are cached (``--cache``, the same files as
``bench/study_subject_key.py``; computing them takes about 20 minutes on two CPU cores).

Usage::

    python bench/count_growth_cells.py CK.pt --cache DIR --out bench/results/growth_cells_cpu_DATE.md
"""

from __future__ import annotations

import argparse
import datetime
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import backend.nerf.subject as subject_mod  # noqa: E402
import backend.nerf.subject_key as key_mod  # noqa: E402
from backend.jobs.subject import as_subject, detection_cameras  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint  # noqa: E402
from backend.stylize.loop import _allowed_cells  # noqa: E402
from backend.stylize.subject_render import subject_cells  # noqa: E402


def cached(path: Path | None, make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``path`` (a pickle) and read back from there when it exists."""
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    value = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(value))
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a reconstruction of fangzhou_nature without its mattes")
    parser.add_argument("--cache", type=Path, help="detection.pkl and plates_x1.pkl (bench/study_subject_key.py)")
    parser.add_argument("--freedoms", default="0.25,0.5", help="shape freedoms to count, head radii")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint, "cpu")
    for tensor in ckpt.model.state_dict().values():  # brought back in float16 (bench_subject.save_halved)
        if tensor.dtype == torch.float16:
            tensor.data = tensor.data.float()
    det = cached(None if args.cache is None else args.cache / "detection.pkl",
                 lambda: subject_mod.detect_subject_bounds(ckpt.model.density, detection_cameras(ckpt), "cpu"))
    plate_fn = key_mod.model_plates(ckpt.model, det.bounds)
    plates = cached(None if args.cache is None else args.cache / "plates_x1.pkl",
                    lambda: [plate_fn(v) for v in det.views])
    seen = det.air
    # left_out_cells with the plates from the cache (the job's rule: key_matte, KEY_VIEW_FRACTION).
    keyed = subject_mod.off_matte_voxels([key_mod.key_matte(p) for p in plates], list(det.views), seen.frame,
                                         seen.half_extent, seen.voxels.shape[0], key_mod.KEY_VIEW_FRACTION)
    grid = ckpt.model.occupancy
    res, domain = grid.resolution, ckpt.model.domain
    left_out = seen.cells(res, domain, "cpu") | subject_mod.SeenAir(keyed, seen.frame, seen.half_extent).cells(
        res, domain, "cpu")
    rec_cells = grid.binary.clone()
    ckpt.subject, ckpt.subject_air = det.bounds, left_out
    cut = as_subject(ckpt)
    cells = grid.binary
    # Height of each cell centre along the capture's up, and the person's highest cell.
    ticks = (torch.arange(res, dtype=torch.float64) + 0.5) / res
    unit = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)
    up = torch.as_tensor(seen.frame[:, 1], dtype=torch.float64)
    centre = torch.as_tensor(det.bounds.matrix[:3, 3], dtype=torch.float64)
    height = ((domain.from_unit_cube(unit) - centre) @ up).reshape(res, res, res)
    person = cells & subject_cells(det.bounds, res, domain, device="cpu")
    top = float(height[person].max())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() or "unknown"
    lines = [f"# Cells a stylization may grow into on {args.checkpoint.name} (fangzhou_nature without mattes)", "",
             f"- date {datetime.date.today()}, commit {commit}, CPU; occupancy grid {res}^3 ({domain.kind})",
             f"- F_rec's occupied cells {int(rec_cells.sum())}; left out of the subject {int(left_out.sum())} "
             f"(seen air and the difference key), of which F_rec occupied {int((left_out & rec_cells).sum())} "
             f"(the haze as_subject cut: {cut}) and left empty {int((left_out & ~rec_cells).sum())}",
             "- growth: cells allowed and not marched by F_rec's subject; above the top: their centre higher "
             "(capture up) than the person's highest cell",
             "- growth cells: with only the haze closed (accbde9, reverted); all left out closed: the stylization's "
             "rule (the seen air too, not only the haze)", "",
             "| shape freedom | growth cells | F_rec left empty | F_rec's haze | above the top | all left out closed "
             "(above the top) | with nothing left out |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for freedom in (float(f) for f in args.freedoms.split(",")):
        everything = _allowed_cells(ckpt.model, freedom, det.bounds) & ~cells
        # Only the haze closed (accbde9's rule, reverted: on a real head the opened air turned to cloud).
        growth = everything & ~(left_out & grid.measured(ckpt.config.occ_threshold))
        lines.append(f"| {freedom:g} | {int(growth.sum())} | {int((growth & ~rec_cells).sum())} | "
                     f"{int((growth & rec_cells).sum())} | {int((growth & (height > top)).sum())} | "
                     f"{int((growth & ~left_out).sum())} ({int((growth & ~left_out & (height > top)).sum())}) | "
                     f"{int(everything.sum())} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
