"""Add-on preferences: where the backend is, how to start one on this machine, and the CURVE keys.

CURVE (ZeroMQ's encryption and authentication) needs the backend's public key and a key pair of this Blender,
whose public key the backend must authorise (``python -m backend keys authorize KEY`` on the backend machine).
The key pair is made here (Generate Key Pair), so the secret key never leaves this machine; like every
preference it is stored in Blender's userpref.blend, readable by this user account only as far as that file
is. A loopback backend without keys needs none of this.
"""

from __future__ import annotations

import re
import socket
import uuid
from typing import Any

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
    server_public_key: StringProperty(name="Backend Public Key", description="The backend's CURVE public key, as "
                                      "printed by 'python -m backend keys show' on the backend machine. Leave "
                                      "empty for a backend without keys (on this machine)", default="")
    client_public_key: StringProperty(name="Public Key", description="This Blender's CURVE public key: "
                                      "authorise it on the backend with 'python -m backend keys authorize KEY'",
                                      default="")
    client_secret_key: StringProperty(name="Secret Key", description="This Blender's CURVE secret key (made by "
                                      "Generate Key Pair; it never needs to leave this machine)", default="",
                                      subtype="PASSWORD")
    client_id: StringProperty(name="Client ID", description="Stable id of this Blender installation; without "
                              "CURVE the backend uses it to give this Blender its own jobs back after a reconnect",
                              default="", options={"HIDDEN"})

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        from .connection import zmq_error
        from .ui_text import draw_wrapped

        if (err := zmq_error()) is not None:
            box = layout.box()
            box.alert = True
            box.label(text="pyzmq is not available", icon="ERROR")
            draw_wrapped(box, err, context, in_box=True)
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
        if runtime.error and runtime.connection == "ERROR":
            box = layout.box()
            box.alert = True
            draw_wrapped(box, runtime.error, context, in_box=True)
        self.draw_keys(layout)
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

    def draw_keys(self, layout) -> None:
        box = layout.box()
        box.label(text="Encryption and Authentication (CURVE)", icon="LOCKED")
        col = box.column()
        col.prop(self, "server_public_key")
        if self.client_public_key:
            col.prop(self, "client_public_key")
            col.prop(self, "client_secret_key")
            sub = box.column(align=True)
            sub.label(text="Authorise this Blender on the backend machine:")
            sub.label(text=authorize_command(self.client_public_key), icon="CONSOLE")
            row = box.row(align=True)
            row.operator("nerfart.copy_client_key", text="Copy Public Key", icon="COPYDOWN").command = False
            row.operator("nerfart.copy_client_key", text="Copy Command", icon="COPYDOWN").command = True
            row.operator("nerfart.generate_client_keys", text="New Key Pair", icon="FILE_REFRESH")
        else:
            box.label(text="A backend with keys (e.g. a shared GPU machine) needs a key pair of this Blender",
                      icon="INFO")
            box.operator("nerfart.generate_client_keys", icon="KEY_HLT")


def key_name() -> str:
    """A name for this Blender's key on the backend (``keys authorize --name``): the host name, sanitised."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48].strip("-.") or "host"
    return f"blender-{host}"


def authorize_command(public_key: str) -> str:
    """The command that authorises ``public_key`` on the backend machine. Z85 keys hold shell characters such
    as '&' and '*', so the key is single-quoted (Z85 has no quote character), and may start with '-', so it
    comes after '--', where the command line cannot take it for an option."""
    return f"python -m backend keys authorize --name {key_name()} -- '{public_key.strip()}'"


def connect_options(prefs: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`.connection.connect` that come from the preferences: the CURVE keys
    and this Blender's stable client id, made and saved on first use. ``prefs`` may also be the defaults of a
    script that registered the add-on outside the preferences system (then without these fields)."""
    if isinstance(prefs, bpy.types.AddonPreferences) and not prefs.client_id:
        prefs.client_id = uuid.uuid4().hex
    return {"curve": (getattr(prefs, "server_public_key", ""), getattr(prefs, "client_public_key", ""),
                      getattr(prefs, "client_secret_key", "")),
            "client_id": getattr(prefs, "client_id", "")}


class NERFART_OT_generate_client_keys(bpy.types.Operator):
    """Make a new CURVE key pair for this Blender; authorise its public key on the backend afterwards"""

    bl_idname = "nerfart.generate_client_keys"
    bl_label = "Generate Key Pair"
    bl_options = {"INTERNAL"}  # noqa: RUF012 - Blender reads a set

    def invoke(self, context, event):
        prefs = get_preferences(context)
        if prefs is not None and prefs.client_public_key:  # replacing a pair locks this Blender out until the
            return context.window_manager.invoke_confirm(self, event)  # new key is authorised: ask first
        return self.execute(context)

    def execute(self, context):
        from .connection import zmq_error

        prefs = get_preferences(context)
        if prefs is None:
            self.report({"ERROR"}, "the add-on is not enabled through the preferences; its keys cannot be saved")
            return {"CANCELLED"}
        if (err := zmq_error()) is not None:
            self.report({"ERROR"}, err)
            return {"CANCELLED"}
        import zmq

        public, secret = zmq.curve_keypair()
        prefs.client_public_key = public.decode()
        prefs.client_secret_key = secret.decode()
        context.preferences.is_dirty = True
        self.report({"INFO"}, f"new key pair; authorise it on the backend: {authorize_command(public.decode())}")
        return {"FINISHED"}


class NERFART_OT_copy_client_key(bpy.types.Operator):
    """Copy this Blender's public key, or the command that authorises it on the backend, to the clipboard"""

    bl_idname = "nerfart.copy_client_key"
    bl_label = "Copy Public Key"
    bl_options = {"INTERNAL"}  # noqa: RUF012 - Blender reads a set

    command: BoolProperty(name="Command", description="Copy the whole 'keys authorize' command, not only the key",
                          default=False, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        prefs = get_preferences(context)
        if prefs is None or not prefs.client_public_key:
            cls.poll_message_set("Generate a key pair first")
            return False
        return True

    def execute(self, context):
        key = get_preferences(context).client_public_key.strip()
        context.window_manager.clipboard = authorize_command(key) if self.command else key
        self.report({"INFO"}, "copied the authorize command" if self.command else "copied the public key")
        return {"FINISHED"}


CLASSES = (NERFART_AddonPreferences, NERFART_OT_generate_client_keys, NERFART_OT_copy_client_key)
