"""NeRF-Art for Blender backend: captures, hash-grid NeRF, NeRF-Art stylization, rendering, meshes, server.

Layers, each importing only those below it: the repository's ``captures`` package (capture readers, numpy
only, shared with the Blender add-on) -> ``nerf`` (rays and pixels of captures, field, rendering, training)
-> ``stylize`` (losses, loop) -> ``jobs`` (one runner per job kind) -> ``server`` (ZeroMQ) and ``cli``.
"""

__version__ = "0.1.0"
