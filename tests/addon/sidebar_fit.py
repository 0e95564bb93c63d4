"""Does a recorded panel fit the sidebar? Each label, button and field of a :class:`RecordingLayout` tree is
given the width Blender's panel layout would give it, and its text, measured in Blender's own UI font
(``blf``), must fit in it; whatever would be cut with an ellipsis is reported.

The width rules are those of Blender's layout engine for panels (``interface_layout.cc``): a row splits its
width equally between its items, except icon-only buttons (one unit, 20), a column gives each item its whole
width, a box takes its border and padding, ``split(factor=f)`` gives the first part ``f`` of the width; an
enum, text or pointer property with a name puts the name in the left third and the field in the rest; a
number field shows ``Name: value`` between its arrows; a checkbox shows its box and then its name.
"""

from __future__ import annotations

import bpy
from recording_layout import RecordingLayout

UNIT = 20.0  # U.widget_unit at scale 1
LABEL_PAD = 8.0  # a label's text inset
BUTTON_PAD = 16.0  # a button's text margins, both sides
NUMBER_PAD = 28.0  # a number field's arrows and margins
MENU_ARROW = 16.0  # the chevron of a drop-down
BOX_MARGINS = 12.0
CONTAINERS = {"row", "column", "box", "split", "column_flow", "grid_flow", "menu_pie"}
SKIPPED = {"template_list", "template_icon", "separator", "separator_spacer", "template_ID", "context_pointer_set"}


def text_width(text: str) -> float:
    from nerfart_blender.ui_text import text_width as width

    return width(text)


def _icon(bound: dict) -> bool:
    return (bool(bound.get("icon")) and bound.get("icon") != "NONE") or bool(bound.get("icon_value"))


def _prop_text(bound: dict, rna_prop) -> str:
    return bound.get("text", rna_prop.name)


def _number_text(data, rna_prop, name: str) -> str:
    value = getattr(data, rna_prop.identifier)
    if rna_prop.type == "FLOAT":
        shown = f"{value:.3f}" if rna_prop.subtype == "FACTOR" else f"{value:.2f}"
    else:
        shown = str(value)
    unit = {"PIXEL": " px", "CAMERA": " mm", "TIME_ABSOLUTE": " s"}.get(
        rna_prop.unit if rna_prop.unit != "NONE" else rna_prop.subtype, "")
    return f"{name}: {shown}{unit}" if name else f"{shown}{unit}"


def needed(name: str, bound: dict) -> tuple[float, str] | None:
    """``(width the widget needs, what it shows)``, or None for widgets that are not checked (lists, icons)."""
    if name in SKIPPED:
        return None
    icon = UNIT if _icon(bound) else 0.0
    if name == "label":
        text = bound.get("text", "")
        return (text_width(text) + LABEL_PAD + icon, text) if text else None
    if name in ("operator", "operator_menu_enum"):
        mod, op = bound["operator"].split(".", 1)
        text = bound.get("text", getattr(getattr(bpy.ops, mod), op).get_rna_type().name)
        if not text:
            return (UNIT, "") if icon else None
        arrow = MENU_ARROW if name == "operator_menu_enum" else 0.0
        return text_width(text) + BUTTON_PAD + icon + arrow, text
    if name == "progress":
        text = bound.get("text", "")
        return (text_width(text) + BUTTON_PAD, text) if text else None
    if name == "prop":
        return _prop_needed(bound, icon)
    return None


def _prop_needed(bound: dict, icon: float) -> tuple[float, str] | None:
    data, ident = bound["data"], bound["property"]
    rna_prop = data.bl_rna.properties[ident]
    text = _prop_text(bound, rna_prop)
    if rna_prop.type == "BOOLEAN" and not getattr(rna_prop, "is_array", False):
        if bound.get("icon_only") or (not text and icon):
            return UNIT, ""
        return UNIT + text_width(text) + 6.0, text
    if rna_prop.type in ("INT", "FLOAT") and not getattr(rna_prop, "is_array", False):
        shown = _number_text(data, rna_prop, text)
        return text_width(shown) + NUMBER_PAD, shown
    if rna_prop.type == "ENUM" and bound.get("expand"):
        items = list(rna_prop.enum_items)
        widest = max(text_width(i.name) for i in items)
        return len(items) * (widest + 12.0), " | ".join(i.name for i in items)
    if rna_prop.type == "ENUM":
        value = rna_prop.enum_items[getattr(data, ident)].name if getattr(data, ident) else ""
        field = text_width(value) + BUTTON_PAD + MENU_ARROW
        if text:  # the name takes the left third
            return max(3.0 * (text_width(text) + LABEL_PAD), 1.5 * field), f"{text}: {value}"
        return field, value
    if rna_prop.type in ("STRING", "POINTER") and text:  # the value may scroll; its name must show
        return 3.0 * (text_width(text) + LABEL_PAD), text
    return None


def overflows(layout: RecordingLayout, width: float) -> list[str]:
    """Every widget of ``layout`` (given ``width``) whose text would be cut, as readable strings."""
    problems: list[str] = []
    _check(layout, width, problems)
    return problems


def _check(layout: RecordingLayout, width: float, problems: list[str]) -> None:
    if layout.kind == "box":
        width -= BOX_MARGINS
    entries = [item for item in layout.items if not (isinstance(item, tuple) and item[0] in ("separator",))]
    if layout.kind == "row" and entries:
        fixed = [_fixed_width(e) for e in entries]
        flexible = [e for e, f in zip(entries, fixed, strict=True) if f is None]
        share = (width - sum(f for f in fixed if f is not None)) / max(1, len(flexible))
        widths = [f if f is not None else share for f in fixed]
    elif layout.kind == "split" and entries:
        factor = float(layout.args.get("factor", 0.0)) or 1.0 / len(entries)
        widths = [width * factor] + [width * (1 - factor) / max(1, len(entries) - 1)] * (len(entries) - 1)
    else:
        widths = [width] * len(entries)
    for entry, w in zip(entries, widths, strict=True):
        if isinstance(entry, RecordingLayout):
            _check(entry, w, problems)
            continue
        need = needed(*entry)
        if need is not None and need[0] > w + 0.5:
            problems.append(f"{layout.path}.{entry[0]} {need[1]!r} needs {need[0]:.0f} of {w:.0f}")


def _fixed_width(entry) -> float | None:
    """The width of an item a row does not stretch (an icon-only button), or None."""
    if isinstance(entry, RecordingLayout):
        inner = [_fixed_width(e) for e in entry.items]
        return max(inner) if inner and all(f is not None for f in inner) else None
    need = needed(*entry)
    return need[0] if need is not None and need[1] == "" else None
