"""Why does "a big hat" grow no visible shape? One diagnostic stylization on the CPU (issue 20B).

The three-sphere scene of ``bench/study_shape_cpu.py`` (16 ring views at 48x48, subject bounds of radius 1),
reconstructed for ``--steps`` steps of the tiny configuration (``--model`` overrides its grid, as JSON), then
"a big hat" (``--prompt``) at shape freedom 0.5 and λ_reg 1 with the analytic stand-in encoder (a test instrument) centred on
the reconstruction's renders, for ``--iterations`` iterations at a grid rate given in 400-iteration terms
(``--lr400``; the loop's convention: a run of n iterations trains at ``lr400 · 400 / n``). ``--weights`` overrides
loss weights (JSON, e.g. ``{"directional": 0}``).

It prints:
- the raw density (pre-activation) in the cells the shape may grow into, before stylization (how "dead" that air
  is: trunc_exp's gradient there is exp(raw));
- losses and each term's gradient norm on the hash grid, eight times in the run;
- the bench's shape metrics (:mod:`bench.shape_eval`: alpha silhouette, haze, IoU) on 8 views;
- the stand-in's own shape statistics (``area``, ``height``, ``width``, ``luminance``) of 4 views before and
  after: what the losses were asked to move, beside what the alpha silhouette shows.

The stand-in counts a pixel as subject through a logistic step at a mean colour deviation from the ground of
``SOLID_DEVIATION`` (0.15); ``--solid-deviation TAU`` moves that step, and ``--exponential-foreground`` brings back
the former foreground-ness ``1 - exp(-dev / 0.05)`` (which counted faint haze almost like solid subject) to
reproduce the diagnosis of 2026-12-07 (``bench/results/shape_cpu_study.md``).

The opacity prior (``LossWeights.opacity``, on by default above shape freedom 0 in the loop) is off here unless
``--weights`` sets it, e.g. ``--weights '{"opacity": 3}'``, so the rows of the diagnosis stay comparable.

CPU + stand-in: PROVISIONAL. Usage::

    python bench/diagnose_shape_cpu.py --iterations 400
    python bench/diagnose_shape_cpu.py --iterations 400 --weights '{"global_contrastive": 0, "local_contrastive": 0}'
    python bench/diagnose_shape_cpu.py --iterations 400 --exponential-foreground
    python bench/diagnose_shape_cpu.py --steps 1500 --iterations 40 \\
        --model '{"n_levels": 16, "log2_table_size": 17, "base_resolution": 16, "max_resolution": 1024,
                  "hidden_dim": 64, "occupancy_resolution": 64}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.stylize import standin_encoder  # noqa: E402
from backend.stylize.clip_model import CLIP_SIZE, preprocess_squash  # noqa: E402
from backend.stylize.loop import SHAPE_LR_ITERATIONS, StylizeProgress, _allowed_cells, preset_config, stylize  # noqa: E402
from backend.stylize.losses import StyleLossConfig, weights_for_strength  # noqa: E402
from backend.stylize.perceptual import load_lpips  # noqa: E402
from backend.stylize.standin_encoder import AnalyticStandInEncoder, load_standin_clip, shape_reference  # noqa: E402
from bench.shape_eval import COLUMNS, format_metrics, shape_metrics, shape_source_images  # noqa: E402
from bench.study_shape_cpu import BOUNDS, SIZE, reconstruction  # noqa: E402

FREEDOM = 0.5


def use_exponential_foreground(tau: float = 0.05) -> None:
    """The stand-in's former foreground-ness (module docstring), for reproducing the diagnosis made with it."""

    def foreground(self: AnalyticStandInEncoder, pixels: torch.Tensor) -> torch.Tensor:  # [B,3,S,S] -> [B,S,S]
        return 1.0 - torch.exp(-self.deviation(pixels) / tau)

    AnalyticStandInEncoder.foreground = foreground  # type: ignore[method-assign]


def growth_raw_density(model) -> torch.Tensor:  # -> [n] raw density at the centres of the cells shape may grow into
    allowed = _allowed_cells(model, FREEDOM, BOUNDS)
    growth = allowed & ~model.occupancy.binary
    u = (growth.nonzero().float() + 0.5) / growth.shape[0]
    with torch.no_grad():
        _, h = model.field._geometry(model.domain.from_unit_cube(u))
    return h[:, 0] + model.field.config.density_bias


def stand_in_statistics(images: torch.Tensor) -> dict[str, float]:  # images [B, 3, H, W] over white
    f = AnalyticStandInEncoder("cpu").image_features(preprocess_squash(images.float(), CLIP_SIZE))
    return {k: round(float(f[k].mean()), 3) for k in ("area", "height", "width", "luminance")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="reconstruction steps (tiny configuration)")
    parser.add_argument("--model", default="{}", help="ReconstructConfig.tiny overrides, JSON")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--lr400", type=float, default=1e-3, help="grid rate in 400-iteration terms")
    parser.add_argument("--weights", default="{}", help="LossWeights overrides, JSON (λ_reg 1 unless given)")
    parser.add_argument("--solid-deviation", type=float, help="the stand-in's foreground step (default 0.15)")
    parser.add_argument("--exponential-foreground", action="store_true", help="the stand-in's former foreground")
    parser.add_argument("--prompt", default="a big hat", help="e.g. 'a red face', a colour prompt's reference")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.solid_deviation is not None:
        standin_encoder.SOLID_DEVIATION = args.solid_deviation
    if args.exponential_foreground:
        use_exponential_foreground()

    rec = reconstruction(args.steps, **json.loads(args.model))
    raw = growth_raw_density(rec.model)
    q = torch.quantile(raw, torch.tensor([0.1, 0.5, 0.9])).tolist()
    print(f"reconstruction {args.steps} steps; raw density in {raw.numel()} growth cells: q10 {q[0]:.1f}, "
          f"median {q[1]:.1f}, q90 {q[2]:.1f}", flush=True)

    iterations = args.iterations
    every = max(1, iterations // 8)
    clip = load_standin_clip(shape_reference=shape_reference(shape_source_images(rec, rec.cameras)))
    weights = dataclasses.replace(weights_for_strength(0.5), **{"regularization": 1.0, **json.loads(args.weights)})
    config = preset_config("tiny", args.prompt, iterations=iterations, max_side=SIZE, n_templates=4,
                           loss=StyleLossConfig(n_crops=4, n_negatives=4), preview_every=10**6, checkpoint_every=0,
                           report_gradients_every=every, shape_freedom=FREEDOM,
                           lr_grid=args.lr400 * SHAPE_LR_ITERATIONS / iterations, weights=weights, seed=0)

    def progress(p: StylizeProgress) -> None:
        if p.stage == "stylizing" and p.step % every == 0:
            grads = {k[5:-5]: f"{v:.2g}" for k, v in p.metrics.items() if k.startswith("grad_") and k.endswith("_grid")}
            print(f"  it {p.step}: losses {({k: round(v, 4) for k, v in p.losses.items()})}; grid gradient {grads}",
                  flush=True)

    t0 = time.perf_counter()
    sty = stylize(rec, config, "cpu", clip=clip, perceptual=load_lpips("cpu", random_init=True), on_progress=progress)
    seconds = time.perf_counter() - t0
    metrics = shape_metrics(rec, sty, rec.cameras.select(list(range(1, 16, 2))))
    print("| " + " | ".join(h for _, h in COLUMNS) + " | seconds |")
    print("| " + " | ".join(format_metrics(metrics)) + f" | {seconds:.0f} |")
    shown = rec.cameras.select([0, 4, 8, 12])
    print("stand-in statistics before", stand_in_statistics(shape_source_images(rec, shown)),
          "after", stand_in_statistics(shape_source_images(sty, shown)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
