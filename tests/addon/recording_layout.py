"""A stand-in for ``bpy.types.UILayout`` that checks every call against Blender's own RNA definitions.

Panels cannot be drawn headless, so tests call ``Panel.draw`` with a :class:`RecordingLayout`. Each method call
is looked up in ``bpy.types.UILayout.bl_rna.functions``: unknown methods, unknown keywords, too many positional
arguments, missing required arguments, wrong value types, unknown enum values (icons included) and read-only or
unknown attributes all raise ``LayoutError``. Beyond the signature it checks what Blender would only report at
draw time: ``prop`` names a real property of its data, ``operator`` names a registered operator (and property
assignments on the returned operator properties exist), ``template_list`` names a registered UIList and real
collection/index properties, ``prop_enum`` values exist.
"""

from __future__ import annotations

from typing import Any

import bpy

FUNCS = bpy.types.UILayout.bl_rna.functions
PROPS = bpy.types.UILayout.bl_rna.properties
PROP_FUNCS = ("prop", "props_enum", "prop_menu_enum", "prop_enum", "prop_search", "prop_tabs_enum",
              "prop_decorator", "prop_with_popover", "prop_with_menu")


class LayoutError(AssertionError):
    """A draw call Blender would reject (or silently draw as an error)."""


def _operator_rna(idname: str):
    if "." not in idname:
        raise LayoutError(f"operator id {idname!r} must look like 'module.name'")
    mod, name = idname.split(".", 1)
    try:
        op = getattr(getattr(bpy.ops, mod), name)
        return op.get_rna_type()
    except (AttributeError, KeyError):
        raise LayoutError(f"operator {idname!r} is not registered") from None


class OperatorPropsRecorder:
    """What ``layout.operator()`` returns: property assignments are checked against the operator's RNA."""

    def __init__(self, idname: str, rna) -> None:
        object.__setattr__(self, "_idname", idname)
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "values", {})

    def __setattr__(self, name: str, value: Any) -> None:
        props = self._rna.properties
        if name not in props:
            raise LayoutError(f"operator {self._idname} has no property {name!r}")
        _check_value(props[name], value, f"{self._idname}.{name}")
        self.values[name] = value

    def __getattr__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        raise LayoutError(f"reading {name!r} from operator properties in a draw function")


def _check_value(p, value: Any, where: str) -> None:
    t = p.type
    if value is None:
        if t == "POINTER":
            return
        raise LayoutError(f"{where}: None is not a valid {t}")
    if t == "STRING" and not isinstance(value, str):
        raise LayoutError(f"{where}: expected a string, got {type(value).__name__}")
    if t == "BOOLEAN":
        if getattr(p, "is_array", False) or getattr(p, "array_length", 0):
            return
        if not isinstance(value, bool):
            raise LayoutError(f"{where}: expected a bool, got {type(value).__name__}")
    if t == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        raise LayoutError(f"{where}: expected an int, got {type(value).__name__}")
    if t == "FLOAT" and (isinstance(value, bool) or not isinstance(value, int | float)) \
            and getattr(p, "array_length", 0) == 0:
        raise LayoutError(f"{where}: expected a number, got {type(value).__name__}")
    if t == "ENUM":
        items = {i.identifier for i in p.enum_items}
        values = value if p.is_enum_flag and isinstance(value, set) else {value}
        if items and not values <= items:
            raise LayoutError(f"{where}: {value!r} is not one of the enum items ({len(items)} known)")


class RecordingLayout:
    """Records and validates UILayout calls; sub-layouts are RecordingLayouts too.

    ``calls`` is every call of the whole tree, as ``(function name, arguments, layout called on)``;
    ``items`` is this layout's own content in order: ``(function name, arguments)`` for a widget, or the child
    RecordingLayout for a sub-layout (``kind`` says which: row, column, box, split, ...; ``args`` its arguments).
    """

    def __init__(self, calls: list | None = None, path: str = "layout", kind: str = "column",
                 args: dict | None = None) -> None:
        object.__setattr__(self, "calls", calls if calls is not None else [])
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "attrs", {})
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "args", args or {})
        object.__setattr__(self, "items", [])

    # Attributes (enabled, active, alert, scale_y, use_property_split, ...) -------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PROPS:
            raise LayoutError(f"UILayout has no attribute {name!r}")
        p = PROPS[name]
        if p.is_readonly:
            raise LayoutError(f"UILayout.{name} is read-only")
        _check_value(p, value, f"UILayout.{name}")
        self.attrs[name] = value

    def __getattr__(self, name: str) -> Any:
        if name in PROPS:
            if name in self.attrs:
                return self.attrs[name]
            p = PROPS[name]
            return getattr(p, "default", None)
        if name not in FUNCS:
            raise LayoutError(f"UILayout has no function {name!r}")
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    # Calls ------------------------------------------------------------------------------------------------

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        func = FUNCS[name]
        params = [p for p in func.parameters if not p.is_output]
        outputs = [p for p in func.parameters if p.is_output]
        ids = [p.identifier for p in params]
        where = f"{self.path}.{name}"
        if len(args) > len(ids):
            raise LayoutError(f"{where}: {len(args)} positional arguments, it takes at most {len(ids)}")
        bound = dict(zip(ids, args, strict=False))
        for k, v in kwargs.items():
            if k not in ids:
                raise LayoutError(f"{where}: unknown keyword {k!r} (parameters: {', '.join(ids)})")
            if k in bound:
                raise LayoutError(f"{where}: {k!r} given twice")
            bound[k] = v
        by_id = {p.identifier: p for p in params}
        for p in params:
            if p.is_required and p.identifier not in bound:
                raise LayoutError(f"{where}: missing required argument {p.identifier!r}")
        for k, v in bound.items():
            if by_id[k].type != "POINTER":
                _check_value(by_id[k], v, f"{where}({k}=...)")
        self.calls.append((name, bound, self))
        result_ops = self._semantic_checks(name, bound, where)
        if result_ops is not None:
            self.items.append((name, bound))
            return result_ops
        if not outputs:
            self.items.append((name, bound))
            return None
        results = []
        for out in outputs:
            if out.type == "POINTER" and out.fixed_type.identifier == "UILayout":
                child = RecordingLayout(self.calls, f"{where}()", name, bound)
                self.items.append(child)
                results.append(child)
            elif out.type == "INT":
                results.append(0)
            elif out.type == "STRING":
                results.append("")
            else:
                results.append(None)
        return results[0] if len(results) == 1 else tuple(results)

    def _semantic_checks(self, name: str, bound: dict, where: str) -> Any:
        if name in PROP_FUNCS:
            data, prop = bound.get("data"), bound.get("property")
            if data is None:
                raise LayoutError(f"{where}: data is None")
            props = data.bl_rna.properties
            if prop not in props:
                raise LayoutError(f"{where}: {type(data).__name__} has no property {prop!r}")
            if name == "prop_enum":
                items = {i.identifier for i in props[prop].enum_items}
                if bound.get("value") not in items:
                    raise LayoutError(f"{where}: {bound.get('value')!r} is not an item of {prop}")
            if name == "prop_search":
                sd, sp = bound["search_data"], bound["search_property"]
                if sp not in sd.bl_rna.properties:
                    raise LayoutError(f"{where}: search data has no property {sp!r}")
        if name in ("operator", "operator_menu_enum", "operator_enum", "operator_menu_hold"):
            rna = _operator_rna(bound["operator"])
            if name in ("operator_menu_enum", "operator_enum") and bound["property"] not in rna.properties:
                raise LayoutError(f"{where}: operator {bound['operator']} has no property {bound['property']!r}")
            if name in ("operator", "operator_menu_hold"):
                return OperatorPropsRecorder(bound["operator"], rna)
        if name == "template_list":
            if not hasattr(bpy.types, bound["listtype_name"]):
                raise LayoutError(f"{where}: UIList {bound['listtype_name']!r} is not registered")
            for data_key, prop_key in (("dataptr", "propname"), ("active_dataptr", "active_propname")):
                data = bound[data_key]
                if bound[prop_key] not in data.bl_rna.properties:
                    raise LayoutError(f"{where}: {type(data).__name__} has no property {bound[prop_key]!r}")
        if name == "menu" and not hasattr(bpy.types, bound["menu"]):
            raise LayoutError(f"{where}: menu {bound['menu']!r} is not registered")
        return None
