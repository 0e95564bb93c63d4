"""What the demo leaves for a person to look at: the JSON report, a contact sheet, an animated preview, and the
summary printed at the end (also stored in the .blend as a text). PIL only; no bpy."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# How the reconstruction decided its subject bounds (its outputs' subject_source).
SUBJECT_SOURCES = {"given": "as given", "detected": "found from the density", "checkpoint": "kept from before",
                   "cameras": "the cameras' default (no subject found in the density)"}
BACKGROUND = (92, 92, 100)  # frames have alpha: they are shown on a neutral grey
SHEET_BACKGROUND = (32, 32, 36)
TEXT = (235, 235, 235)
WARNING = (255, 110, 90)
PAD = 8
REPORT_VERSION = 1
MIN_GIF_SECONDS = 3.0


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report atomically (a reader never sees half of it)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _on_background(path: Path, side: int) -> Image.Image:
    """An RGBA image composited on the neutral grey, scaled so its long side is ``side`` pixels."""
    img = Image.open(path).convert("RGBA")
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    base = Image.new("RGBA", img.size, (*BACKGROUND, 255))
    base.alpha_composite(img)
    return base.convert("RGB")


def pick_evenly(items: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` items spread evenly over ``items`` (first one included)."""
    if len(items) <= n:
        return list(items)
    return [items[math.floor(i * len(items) / n)] for i in range(n)]


def contact_sheet(path: Path, header: Sequence[tuple[str, bool]], sections: Sequence[tuple[str, Sequence[Path]]],
                  columns: int = 8, cell: int | None = None) -> tuple[int, int]:
    """Write a PNG: header lines (text, is_warning), then each section's title and a grid of its images.

    Images are scaled so their long side is ``cell`` pixels (default: their own size, within 128..256);
    ``columns`` is the number per row for square images (more for portrait ones).

    Returns:
        The sheet's ``(width, height)``.
    """
    all_images = [p for _, images in sections for p in images]
    if not all_images:
        raise ValueError("a contact sheet needs at least one image")
    if cell is None:
        with Image.open(all_images[0]) as first:
            cell = int(min(256, max(128, max(first.size))))
    font, title_font = _font(14), _font(16)
    line_h = 20
    rows = [(title, [_on_background(p, cell) for p in images]) for title, images in sections if images]
    # Portrait images make narrow tiles: more of them per row keeps the sheet about as wide.
    cell_w = max(t.width for _, tiles in rows for t in tiles)
    columns = max(columns, (columns * cell) // cell_w)
    width = columns * cell_w + (columns + 1) * PAD
    height = PAD + len(header) * line_h + PAD
    for _, tiles in rows:
        n_rows = math.ceil(len(tiles) / columns)
        height += line_h + PAD + n_rows * (max(t.height for t in tiles) + PAD)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [(part, warn) for text, warn in header for part in _wrap(measure, text, font, width - 2 * PAD)]
    height += (len(lines) - len(header)) * line_h
    sheet = Image.new("RGB", (width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = PAD
    for text, warn in lines:
        draw.text((PAD, y), text, fill=WARNING if warn else TEXT, font=font)
        y += line_h
    y += PAD
    for title, tiles in rows:
        draw.text((PAD, y), title, fill=TEXT, font=title_font)
        y += line_h + PAD
        tile_h = max(t.height for t in tiles)
        for i, tile in enumerate(tiles):
            col, row = i % columns, i // columns
            sheet.paste(tile, (PAD + col * (cell_w + PAD) + (cell_w - tile.width) // 2, y + row * (tile_h + PAD)))
        y += math.ceil(len(tiles) / columns) * (tile_h + PAD)
    sheet.save(path, optimize=True)
    return sheet.size


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current]


def turntable_gif(path: Path, frames: Sequence[Path], fps: float, max_frames: int = 48) -> int:
    """Write an endlessly looping GIF of the frames (on the neutral grey); returns the number of frames used."""
    chosen = pick_evenly(frames, max_frames)
    if not chosen:
        raise ValueError("no frames for the animated preview")
    with Image.open(chosen[0]) as first:
        side = max(first.size)
    images = [_on_background(p, side) for p in chosen]
    # The whole orbit lasts as long as in the .blend at ``fps``, but at least MIN_GIF_SECONDS: a 24-frame CPU
    # turntable would otherwise spin once a second.
    duration_ms = round(1000.0 * max(len(frames) / fps, MIN_GIF_SECONDS) / len(chosen))
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=True)
    return len(images)


def fmt_value(value: Any, spec: str = ".2f", unit: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``unit``), or ``n/a`` when it is missing."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def header_lines(report: dict[str, Any]) -> list[tuple[str, bool]]:
    """The contact sheet's header: what ran, where, how well; the not-prompt-driven warning in red."""
    st = report["stages"]
    rec, sty = st["reconstruct"], st["stylize"]
    lines = [
        (f"NeRF-Art demo ({report['size']} size) - prompt: \"{report['prompt']}\"", False),
        (f"device: {report['device']['name']} | capture: {report['capture']['views']} views "
         f"{report['capture']['width']}x{report['capture']['height']} | total {report['total_seconds']:.0f} s", False),
        (f"reconstruct: PSNR {fmt_value(rec.get('psnr'))} dB "
         f"(held-out {fmt_value(rec.get('heldout_psnr'))} dB), "
         f"{rec.get('steps')} steps, {rec['seconds']:.0f} s | stylize: {sty.get('iterations')} iterations, "
         f"loss {fmt_value(sty.get('losses', {}).get('total'), '.4g')}, {sty['seconds']:.0f} s", False),
    ]
    if not report["prompt_driven"]:
        lines.append(("NOT PROMPT-DRIVEN: stylized with a randomly initialised CLIP, so the result does not follow "
                      f"the prompt. Why: {report['prompt_driven_reason']}", True))
    return lines


def summary_text(report: dict[str, Any], out_dir: Path) -> str:
    """The lines printed at the end of a run (and kept in the .blend as a text)."""
    st = report["stages"]
    rec, sty, mesh = st["reconstruct"], st["stylize"], st["extract_mesh"]
    o = report["outputs"]
    lines = [
        f"NeRF-Art demo finished in {report['total_seconds']:.0f} s ({report['size']} size, device "
        f"{report['device']['name']}).",
        f"  prompt:        \"{report['prompt']}\"",
        f"  reconstruct:   PSNR {fmt_value(rec.get('psnr'))} dB on training views, "
        f"{fmt_value(rec.get('heldout_psnr'))} dB held out; subject bounds "
        + SUBJECT_SOURCES.get(str(rec.get("subject_source")), "unknown"),
        f"  stylize:       {sty.get('iterations')} iterations, final loss "
        f"{fmt_value(sty.get('losses', {}).get('total'), '.4g')}",
    ]
    if not report["prompt_driven"]:
        lines.append("  NOTE:          the stylization is NOT prompt-driven (random CLIP weights): "
                     f"{report['prompt_driven_reason']}")
    lines += [
        "  stage seconds: " + ", ".join(f"{name} {s['seconds']:.1f}" for name, s in st.items()),
        "Outputs in " + str(out_dir) + ":",
        f"  {o['blend']:<22} Blender scene: mesh, capture and turntable cameras, frames on the turntable camera",
        f"  {o['frames']:<22} {st['render']['frames']} turntable frames "
        f"({st['render']['width']}x{st['render']['height']} PNG with alpha"
        + ("" if st["render"].get("include_background") else ": the subject alone") + ")",
        f"  {o['contact_sheet']:<22} contact sheet (capture views and turntable frames)",
        f"  {o['preview']:<22} animated turntable preview",
        (f"  {o['mesh']:<22} textured mesh, {mesh.get('vertices')} vertices, {mesh.get('faces')} faces, "
         f"{mesh.get('texture_size')}px texture"
         if o["mesh"] else f"  {'(no mesh)':<22} {mesh.get('error', 'the mesh job did not run')}"),
        f"  {o['capture']:<22} the capture (images and transforms.json)",
        f"  {o['report']:<22} this report as JSON",
        f"  {o['work_dir']:<22} backend jobs (checkpoints; reuse with python -m backend ... --work-dir)",
        f"  {o['logs']:<22} backend.log (the backend's output), blender.log (Cycles)",
    ]
    if report["errors"]:
        lines.append(f"Finished with {len(report['errors'])} error(s): " + "; ".join(report["errors"]))
    return "\n".join(lines)
