"""NeRF-Art for Blender: text-driven stylization of captured heads with a NeRF backend.

Registration only. The metadata lives in ``blender_manifest.toml`` (a Blender 4.2+ extension, so no
``bl_info``). ``core/`` is Blender-free and importable anywhere; the modules beside it form the bpy layer and
are imported only when Blender is present, so ``import blender_addon.core`` works on any Python.
``core/captures.py`` also needs the repository's ``captures/`` package beside it, as ``build_addon.py`` stages
it into the zip (the tests import it that way too).
"""

try:
    import bpy
except ImportError:  # imported outside Blender (plain pytest of core/): there is nothing to register
    bpy = None

if bpy is not None:
    from . import connection, frames_ops, operators, panels, preferences, properties, tick

    classes = (
        *properties.CLASSES,
        *preferences.CLASSES,
        *operators.CLASSES,
        *frames_ops.CLASSES,
        *panels.CLASSES,
    )
else:
    classes = ()


def register():
    from .core.dependencies import import_problem

    # Every part of the add-on works on numpy arrays (cameras, captures, meshes): without it, refuse to enable
    # with the package to install rather than fail later inside an operator.
    problem = import_problem("numpy", "NeRF-Art for Blender")
    if problem is not None:
        raise ImportError(problem)
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nerfart = bpy.props.PointerProperty(
        type=properties.NERFART_PG_settings, name="NeRF-Art", description="NeRF-Art settings of this scene")
    bpy.types.WindowManager.nerfart_runtime = bpy.props.PointerProperty(
        type=properties.NERFART_PG_runtime, name="NeRF-Art Runtime", description="Live NeRF-Art state (not saved)")
    tick.reset_runtime()
    tick.register_timer()


def unregister():
    tick.say_goodbye()
    tick.unregister_timer()
    connection.shutdown()
    del bpy.types.WindowManager.nerfart_runtime
    del bpy.types.Scene.nerfart
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
