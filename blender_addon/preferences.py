"""Add-on preferences: where the backend is, and how to start one on this machine."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, FloatProperty, StringProperty

from .core.local_backend import DEFAULT_ARGS

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def get_preferences(context=None) -> NERFART_AddonPreferences | None:
    """This add-on's preferences, or None if the add-on is not enabled through the preferences system."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def is_loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` is on this machine (no network consent needed, paths are valid on both sides)."""
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return endpoint.startswith("ipc://") or host in ("127.0.0.1", "localhost", "::1")


class NERFART_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    endpoint: StringProperty(name="Backend Address", description="ZeroMQ address of the backend, e.g. "
                             "tcp://127.0.0.1:5555 (use an SSH tunnel for a remote GPU machine)",
                             default=DEFAULT_ENDPOINT)
    hmac_key: StringProperty(name="Signing Key", description="Shared key the backend was started with "
                             "(leave empty for an unsigned loopback backend)", default="", subtype="PASSWORD")
    start_local: BoolProperty(name="Start a Local Backend", description="Start and stop a backend process on "
                              "this machine from the add-on", default=False)
    python_path: StringProperty(name="Backend Python", description="The python executable of the environment "
                                "where the backend is installed", default="", subtype="FILE_PATH")
    work_dir: StringProperty(name="Working Folder", description="Folder to start the backend in (the checkout "
                             "that contains backend/)", default="", subtype="DIR_PATH")
    backend_args: StringProperty(name="Arguments", description="Arguments after the python executable; "
                                 "{endpoint} becomes the backend address", default=DEFAULT_ARGS)
    timeout_s: FloatProperty(name="Response Timeout", description="Seconds without a heartbeat before the "
                             "backend shows as not responding", default=4.0, min=1.0, max=120.0, unit="TIME_ABSOLUTE")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        from .connection import zmq_error

        if (err := zmq_error()) is not None:
            box = layout.box()
            box.alert = True
            box.label(text="pyzmq is not available", icon="ERROR")
            box.label(text=err[:200])
        col = layout.column()
        col.prop(self, "endpoint")
        col.prop(self, "hmac_key")
        col.prop(self, "timeout_s")
        if not is_loopback(self.endpoint) and not bpy.app.online_access:
            box = layout.box()
            box.label(text="A remote backend needs Online Access (Preferences ▸ System ▸ Network)", icon="INFO")
        runtime = context.window_manager.nerfart_runtime
        row = layout.row()
        row.operator("nerfart.test_connection", icon="LINKED")
        row.label(text=runtime.status_text, icon="CHECKMARK" if runtime.connection == "CONNECTED" else "BLANK1")
        layout.separator()
        layout.prop(self, "start_local")
        col = layout.column()
        col.active = self.start_local
        col.prop(self, "python_path")
        col.prop(self, "work_dir")
        col.prop(self, "backend_args")
        row = col.row(align=True)
        row.operator("nerfart.start_local_backend", icon="PLAY")
        row.operator("nerfart.stop_local_backend", icon="CANCEL")
        if runtime.local_backend:
            col.label(text=runtime.local_backend, icon="CONSOLE")


CLASSES = (NERFART_AddonPreferences,)
