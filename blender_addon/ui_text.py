"""Text that fits the sidebar: measure it in Blender's UI font and wrap it to the width the panel really has.

Blender cuts a label that is wider than its button with an ellipsis, so long texts (backend errors, warnings,
paths) are wrapped here into several labels. Widths are in UI units at scale 1 (Blender's pixels before the
resolution scale); :func:`content_width` turns the sidebar's width into the room a label gets.
"""

from __future__ import annotations

import functools

import blf
import bpy

# Blender's defaults at UI scale 1 (UI_interface.hh): the sidebar opens 220 wide; its category tabs take one
# widget unit (20), each panel keeps UI_PANEL_MARGIN_X (8) and its layout padding (8) on both sides.
SIDEBAR_DEFAULT_WIDTH = 220.0
SIDEBAR_MARGINS = 20.0 + 2 * 8.0 + 2 * 8.0
BOX_MARGINS = 12.0  # a box's border and padding, both sides together
LABEL_INSET = 8.0  # a label's text starts this far in
ICON_WIDTH = 20.0  # an icon before a label's text
FONT_ID = 0  # Blender's default UI font


def ui_scale(context=None) -> float:
    """The UI's resolution scale (DPI and the Resolution Scale preference), 1 without a window."""
    prefs = (context or bpy.context).preferences
    return prefs.system.ui_scale or prefs.view.ui_scale or 1.0


def font_points(context=None) -> float:
    return (context or bpy.context).preferences.ui_styles[0].widget.points or 11.0


def text_width(text: str, context=None) -> float:
    """Width of ``text`` in the UI font at scale 1, in UI units."""
    return _width(text, font_points(context))


def _width(text: str, points: float) -> float:
    blf.size(FONT_ID, points)
    return blf.dimensions(FONT_ID, text)[0]


def content_width(context=None, in_box: bool = False) -> float:
    """The room a full-width label has in a sidebar panel, in UI units (the sidebar's default width when
    drawing outside a region, e.g. in tests)."""
    context = context or bpy.context
    region = getattr(context, "region", None)
    width = region.width / ui_scale(context) if region is not None and region.width > 1 else SIDEBAR_DEFAULT_WIDTH
    return max(60.0, width - SIDEBAR_MARGINS - (BOX_MARGINS if in_box else 0.0))


def wrap(text: str, width: float, context=None) -> list[str]:
    """``text`` in lines no wider than ``width`` UI units (words longer than a line are cut into pieces);
    the text's own line breaks are kept."""
    return list(_wrap(text, round(width), font_points(context)))


@functools.lru_cache(maxsize=256)  # panels redraw often; the same texts are wrapped again and again
def _wrap(text: str, width: float, points: float) -> tuple[str, ...]:
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split():
            while len(word) > 1 and _width(word, points) > width:  # a path or a hash without spaces: cut it
                if line:
                    lines.append(line)
                    line = ""
                cut = _longest_prefix(word, width, points)
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{line} {word}" if line else word
            if line and _width(candidate, points) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return tuple(lines)


def _longest_prefix(word: str, width: float, points: float) -> int:
    """The length of the longest prefix of ``word`` that fits ``width`` (at least 1 character)."""
    lo, hi = 1, len(word)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _width(word[:mid], points) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def draw_wrapped(layout, text: str, context=None, in_box: bool = False, max_lines: int | None = None,
                 icon: str = "NONE") -> bool:
    """Draw ``text`` as wrapped labels (the first with ``icon``); returns whether lines were left out."""
    width = content_width(context, in_box) - LABEL_INSET - (ICON_WIDTH if icon != "NONE" else 0.0)
    lines = wrap(text, width, context)
    shown = lines if max_lines is None else lines[:max_lines]
    col = layout.column(align=True)
    for i, line in enumerate(shown):
        col.label(text=line, icon=icon if i == 0 else ("BLANK1" if icon != "NONE" else "NONE"))
    return len(shown) < len(lines)
