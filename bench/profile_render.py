"""Where a rendered frame's time goes (issue 5): renderer variants on a trained fangzhou model.

Not a results benchmark (that is ``bench_outputs.py``): this prints the fused field's error and speed
against the PyTorch field, then for each renderer variant the median ms per frame at 512x512 and
1920x1080 and its difference to the training renderer's frame, then a torch.profiler table of one frame.

Usage (GPU)::

    python bench/profile_render.py --data .scene --train-s 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.nerf import ReconstructConfig, train_reconstruction  # noqa: E402
from backend.nerf._triton_field import FusedField  # noqa: E402
from backend.nerf.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from backend.nerf.evaluate import render_image  # noqa: E402
from backend.nerf.frame_renderer import FrameRenderer  # noqa: E402
from backend.nerf.marching import march_rays  # noqa: E402
from backend.nerf.rays import rays_for_image  # noqa: E402
from bench.bench_outputs import turntable  # noqa: E402
from captures import load_capture  # noqa: E402


def timed(fn, n: int) -> float:
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--train-s", type=float, default=20.0)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/profile_render_ckpt.pt"))
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda")
    if args.checkpoint.is_file():
        ckpt = load_checkpoint(args.checkpoint, device)
    else:
        capture = load_capture(args.data / "fangzhou_nature")
        ckpt = train_reconstruction(capture, ReconstructConfig(time_budget_s=args.train_s, resolution_scale=0.5),
                                    device)
        print(f"trained: {ckpt.metrics}", flush=True)
        save_checkpoint(ckpt, args.checkpoint)
        ckpt = load_checkpoint(args.checkpoint, device)  # as the render job sees it: a fresh, uncompiled model
    print(f"model: scene={ckpt.model.config.scene} settings={ckpt.model.settings} "
          f"occupied cells={float(ckpt.model.occupancy.binary.float().mean()):.4f}", flush=True)
    sizes = [(512, 512), (1920, 1080)]
    cams = {s: turntable(ckpt, args.frames, *s) for s in sizes}

    # The fused field against the PyTorch field on points where the head is (samples of a real frame).
    model = ckpt.model
    fused = FusedField(model.field)
    cm = ckpt.normalization.cameras_to_model(cams[sizes[0]])
    ro, rd = rays_for_image(cm, 0, device=device)
    s = march_rays(ro, rd, model.occupancy, model.domain, model.settings)
    pos, dirs = s.positions, rd[s.ray_indices]
    with torch.no_grad():
        rgb_ref, sig_ref = model.field(pos, dirs)
        rgb_f, sig_f = fused(pos, dirs)
    print(f"fused vs float32 field on {pos.shape[0]} frame samples: rgb max abs {float((rgb_f - rgb_ref).abs().max()):.2e}"
          f", sigma rel {float((sig_f - sig_ref).norm() / sig_ref.norm()):.2e}", flush=True)
    n_pts = pos.shape[0]
    ms_fused = timed(lambda: fused(pos, dirs), 10)
    ms_torch = timed(lambda: model.field(pos, dirs), 5)
    print(f"field on {n_pts} samples: fused {ms_fused:.2f} ms ({n_pts / ms_fused / 1e6:.0f} M/ms... "
          f"{n_pts / ms_fused * 1e3 / 1e9:.2f} G samples/s), PyTorch eager {ms_torch:.2f} ms", flush=True)

    rows = []
    reference: dict[tuple[int, int], torch.Tensor] = {}
    model.compile_kernels()
    render_image(ckpt, cams[sizes[0]], 0, chunk=2**18)
    for s_ in sizes:
        reference[s_] = render_image(ckpt, cams[s_], 1, chunk=2**18)[0]
    def tuned(block: int, warps: int) -> FrameRenderer:
        r = FrameRenderer(ckpt, fused="on")
        r._fused.BLOCK, r._fused.NUM_WARPS = block, warps
        return r

    variants = [
        ("old: render_image compiled 256k", None),
        ("frame renderer, compiled PyTorch field", FrameRenderer(ckpt, fused="off")),
        (f"frame renderer, fused (block {FusedField.BLOCK}, {FusedField.NUM_WARPS} warps)",
         FrameRenderer(ckpt, fused="on")),
        ("fused, block 32, 2 warps", tuned(32, 2)),
        ("fused, block 128, 4 warps", tuned(128, 4)),
        ("fused, block 128, 8 warps", tuned(128, 8)),
        ("fused, block 256, 8 warps", tuned(256, 8)),
        ("fused, eps 1e-3", FrameRenderer(ckpt, fused="on", early_stop_eps=1e-3)),
    ]
    for name, r in variants:
        for s_ in sizes:
            c = cams[s_]

            def frame(i: int, c=c, r=r) -> torch.Tensor:
                return (render_image(ckpt, c, i, chunk=2**18) if r is None else r.render(c, i))[0]

            frame(0)  # warm-up at this size
            order = iter([i % len(c) for i in range(10**4)])
            ms = timed(lambda order=order, frame=frame: frame(next(order)), args.frames)
            diff = (frame(1) - reference[s_]).abs()
            psnr = -10 * torch.log10(diff.square().mean()).item()
            rows.append((name, f"{s_[0]}x{s_[1]}", ms, float(diff.max()), psnr))
            print(f"{name:40s} {s_[0]}x{s_[1]}: {ms:7.1f} ms  max diff {float(diff.max()):.2e}  PSNR vs old "
                  f"{psnr:.1f} dB", flush=True)
    print("\n| variant | size | ms/frame | fps | max abs diff vs old | PSNR vs old dB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, size, ms, mx, psnr in rows:
        print(f"| {name} | {size} | {ms:.1f} | {1e3 / ms:.1f} | {mx:.1e} | {psnr:.1f} |")
    st: dict[str, int] = {}
    march_rays(ro, rd, model.occupancy, model.domain, model.settings, sigma_fn=model.density, stats=st)
    print(f"512x512 frame: occupied steps/ray {st['n_occupied'] / ro.shape[0]:.1f}, kept after culling "
          f"{st['n_samples'] / ro.shape[0]:.1f}", flush=True)
    from torch.profiler import ProfilerActivity, profile

    c = cams[sizes[0]]
    r = FrameRenderer(ckpt, fused="on")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        r.render(c, 2)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
