"""Fill the caches of the stylization's pretrained weights once, or report which are there.

On a machine with network access (way 1 in :class:`~backend.stylize.weights.WeightsUnavailableError`)::

    python -m backend.stylize.fetch_weights --fetch   # download CLIP ViT-B-32/openai and VGG16 into the caches
    python -m backend.stylize.fetch_weights           # report which weights are present, download nothing

A module of its own, above the loaders it calls (:mod:`.clip_model`, :mod:`.perceptual`), which themselves
build on :mod:`.weights`: so ``weights`` imports neither.
"""

from __future__ import annotations

import argparse
import sys

from .clip_model import load_clip
from .perceptual import load_lpips
from .weights import WeightsUnavailableError, clip_checkpoint, vgg16_cached_path


def _report(fetch: bool, clip_name: str, clip_tag: str) -> int:
    ckpt = clip_checkpoint(clip_name, clip_tag)
    vgg = vgg16_cached_path()
    status = 0
    if fetch:
        for label, action in (("CLIP", lambda: load_clip(clip_name, clip_tag, device="cpu", cache=None)),
                              ("LPIPS", lambda: load_lpips(device="cpu", cache=None))):
            try:
                action()
                print(f"{label}: ok")
            except WeightsUnavailableError as exc:
                print(f"{label}: {exc}", file=sys.stderr)
                status = 1
    cached = ckpt.cached_file()
    print(f"CLIP {clip_name}/{clip_tag}: {'cached at ' + str(cached) if cached else 'MISSING'} "
          f"(cache {ckpt.cache_dir})")
    print(f"VGG16: {'cached at ' + str(vgg) if vgg.is_file() else 'MISSING'} (cache {vgg.parent})")
    if cached is None or not vgg.is_file():
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fetch", action="store_true", help="download missing weights into the caches")
    parser.add_argument("--clip-name", default="ViT-B-32")
    parser.add_argument("--clip-tag", default="openai")
    args = parser.parse_args(argv)
    return _report(args.fetch, args.clip_name, args.clip_tag)


if __name__ == "__main__":
    # Under `python -m`, this file runs as __main__, a second copy of the module; the loaders raise the
    # package copy's WeightsUnavailableError, so run the package copy's main() for `except` to match.
    from backend.stylize.fetch_weights import main as _package_main

    raise SystemExit(_package_main())
