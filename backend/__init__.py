"""NeRF-Art for Blender backend: captures, hash-grid NeRF, NeRF-Art stylization, rendering, meshes, server.

Layers, each importing only those below it: the repository's ``captures`` package (capture readers, numpy
only, shared with the Blender add-on) -> ``nerf`` (rays and pixels of captures, field, rendering, training)
-> ``stylize`` (losses, loop) -> ``jobs`` (one runner per job kind), which stands on ``jobstore`` (records,
store, lock, queue, execute, the job messages; below every executor and front end) -> ``scaleout`` (jobs as
Ray tasks) -> ``server`` (ZeroMQ), which stands on ``access`` (CURVE keys, endpoints) -> ``cli``.
``tests/test_layering.py`` checks that no import goes in a circle.
"""

__version__ = "0.1.0"
