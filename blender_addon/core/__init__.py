"""The add-on's Blender-free core: camera maths, capture readers, export formats, job state.

Nothing under ``core/`` imports ``bpy`` or ``mathutils``, so all of it runs and is tested with plain pytest.
The bpy layer (the modules beside this package) only copies values in and out of Blender.
"""
