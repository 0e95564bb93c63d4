"""Rendered frames where artists look: on the rendering camera, in the compositor and in the sequencer.

A render job writes ``frame_0001.png``... into its folder (a rig: one sub-folder per camera, see
:func:`.core.sampling.frame_file_name`). Each folder of frames is ONE image datablock, found again by its folder
(never by name), so rendering into the same folder again reloads it instead of adding ``.001`` copies. The image
is shown as the background image sequence of the camera(s) the frames were rendered from, in front of the scene
with its alpha (the NeRF over the viewport, like an Alpha Over), each file at the scene frame it was rendered
for. It keeps a fake user, so it is saved with the .blend even when no camera shows it.

On request the same image goes into the compositor (an Image node alpha-overed onto the Render Layers, created
once and updated after) or the sequencer (one image strip at the frames it was rendered for).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bpy

from .core.sampling import frame_file_name, frame_of_file, sequence_image_user

FRAMES_KEY = "nerfart_frames"  # custom property on an Image: it shows a folder of rendered frames
IMAGE_NODE = "NeRF-Art Frames"  # the compositor's Image node
MIX_NODE = "NeRF-Art Alpha Over"  # the compositor's Alpha Over of the frames onto the render


@dataclass
class FolderFrames:
    """The frame files of one folder (one camera's sequence), sorted by frame."""

    folder: Path
    files: list[tuple[int, Path]]  # (scene frame, file), ascending frames

    @property
    def first(self) -> int:
        return self.files[0][0]

    @property
    def last(self) -> int:
        return self.files[-1][0]

    @property
    def first_file(self) -> Path:
        return self.files[0][1]


def camera_folder_name(camera: str) -> str:
    """The sub-folder a rig camera's frames go to (``"Cam.001"`` -> ``"Cam.001"``, ``"A/B"`` -> ``"A_B"``)."""
    return frame_file_name(0, camera, 0, "png", multi_camera=True).split("/")[0]


def scan_frames(out_dir: Path) -> list[FolderFrames]:
    """The frames under a render job's folder, one entry per folder of frames (a rig: one per camera), sorted
    by folder.

    Raises:
        ValueError: when ``out_dir`` holds no frames.
    """
    by_folder: dict[Path, list[tuple[int, Path]]] = {}
    for path in out_dir.rglob("frame_*"):
        frame = frame_of_file(path.name)
        if frame is not None and path.is_file():
            by_folder.setdefault(path.parent, []).append((frame, path))
    if not by_folder:
        raise ValueError(f"{out_dir} holds no rendered frames")
    return [FolderFrames(folder, sorted(files)) for folder, files in sorted(by_folder.items())]


def image_label(name: str, out_dir: Path, folder: Path) -> str:
    """The image name of a job's folder: ``name`` itself, or ``"<name> <camera folder>"`` for a rig."""
    return name if folder == out_dir else f"{name} {folder.name}"


# ---------------------------------------------------------------------------------------------------------
# One image per folder
# ---------------------------------------------------------------------------------------------------------


def _folder_of(img: bpy.types.Image) -> Path | None:
    if not img.filepath:
        return None
    return Path(bpy.path.abspath(img.filepath, library=img.library)).parent.resolve()


def folder_image(folder: Path) -> bpy.types.Image | None:
    """The add-on's image showing the frames of ``folder``, or None."""
    want = folder.resolve()
    for img in bpy.data.images:
        if img.get(FRAMES_KEY) and img.library is None and _folder_of(img) == want:
            return img
    return None


def _blend_path(path: Path) -> str:
    """``path`` relative to the saved .blend (``//frames/...``) so the folder can move with it; absolute when
    the file is unsaved or on another drive."""
    if not bpy.data.filepath:
        return str(path)
    try:
        return bpy.path.relpath(str(path))
    except ValueError:  # another drive (Windows)
        return str(path)


def frames_image(frames: FolderFrames, name: str) -> bpy.types.Image:
    """The one image of ``frames.folder``: found and reloaded, or loaded once; a sequence when it holds several
    frames. It keeps a fake user so that the .blend keeps it even when no camera shows it."""
    img = folder_image(frames.folder)
    if img is None:
        img = bpy.data.images.load(str(frames.first_file), check_existing=False)
        img.name = name
        img[FRAMES_KEY] = 1
        img.filepath = _blend_path(frames.first_file)
    wanted = frames.first_file.resolve()
    if Path(bpy.path.abspath(img.filepath)).resolve() != wanted:
        img.filepath = _blend_path(frames.first_file)
    img.source = "SEQUENCE" if len(frames.files) > 1 else "FILE"
    img.use_fake_user = True
    img.reload()
    return img


def _sync(image_user, first: int, last: int) -> None:
    """Frame-sync an ImageUser (or an Image node): scene frame f shows ``frame_<f>``."""
    start, duration, offset = sequence_image_user(first, last)
    image_user.frame_start, image_user.frame_duration, image_user.frame_offset = start, duration, offset
    image_user.use_auto_refresh = True
    image_user.use_cyclic = False


# ---------------------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------------------


def camera_background(cam_data: bpy.types.Camera) -> bpy.types.CameraBackgroundImage | None:
    """The camera's NeRF-Art background slot (the one showing an image of rendered frames), or None."""
    for bg in cam_data.background_images:
        if bg.source == "IMAGE" and bg.image is not None and bg.image.get(FRAMES_KEY):
            return bg
    return None


def show_on_camera(cam_obj: bpy.types.Object, img: bpy.types.Image, first: int, last: int
                   ) -> bpy.types.CameraBackgroundImage:
    """Show ``img`` as the camera's background image sequence, in front of the scene with its alpha, each file
    at its scene frame. A camera has one NeRF-Art slot: a newer render replaces the image an earlier one put
    there (that image stays in the file); the artist's own background images are left alone."""
    cam_data = cam_obj.data
    bg = camera_background(cam_data) or cam_data.background_images.new()
    bg.source = "IMAGE"
    bg.image = img
    bg.alpha = 1.0  # the frames carry their own alpha: opaque where the NeRF is, clear around it
    bg.display_depth = "FRONT"  # over the viewport's objects, as the composited result would be
    bg.frame_method = "STRETCH"  # the frames were rendered for exactly this camera frame
    bg.show_background_image = True
    _sync(bg.image_user, first, last)
    cam_data.show_background_images = True
    return bg


def cameras_showing(img: bpy.types.Image) -> list[bpy.types.Object]:
    """The camera objects whose NeRF-Art background shows ``img``."""
    return [o for o in bpy.data.objects if o.type == "CAMERA" and (bg := camera_background(o.data)) is not None
            and bg.image == img]


def _cameras_for(frames: FolderFrames, out_dir: Path, names: Iterable[str]) -> list[bpy.types.Object]:
    """The camera objects among ``names`` that rendered ``frames``: a rig's camera by its sub-folder, else all."""
    objs = [o for n in dict.fromkeys(names) if (o := bpy.data.objects.get(n)) is not None and o.type == "CAMERA"]
    if frames.folder != out_dir:
        objs = [o for o in objs if camera_folder_name(o.name) == frames.folder.name]
    return objs


def show_frames(scene: bpy.types.Scene, out_dir: Path, name: str, cameras: Sequence[str] | None = None
                ) -> list[bpy.types.Image]:
    """Load a render job's frames (one image per folder) and show each on the camera(s) it was rendered from.

    Args:
        out_dir: the job's output folder (a rig: one sub-folder per camera).
        name: the image name (a rig camera's image: ``"<name> <camera folder>"``).
        cameras: the camera object names the job rendered from; None: a rig's cameras by folder name among the
            file's cameras, else the cameras already showing the image, else the scene camera. Cameras already
            showing an image always get it refreshed.

    Raises:
        ValueError: when ``out_dir`` holds no frames.
    """
    out_dir = out_dir.resolve()
    found = scan_frames(out_dir)
    images = []
    for frames in found:
        img = frames_image(frames, image_label(name, out_dir, frames.folder))
        if cameras is not None:
            names: list[str] = list(cameras)
        elif frames.folder != out_dir:
            names = [o.name for o in bpy.data.objects if o.type == "CAMERA"]
        elif cameras_showing(img):  # shown before (a reopened file): on the cameras it was rendered from
            names = []
        else:
            names = [scene.camera.name] if scene.camera is not None else []
        for cam in {*_cameras_for(frames, out_dir, names), *cameras_showing(img)}:
            show_on_camera(cam, img, frames.first, frames.last)
        images.append(img)
    show_in_image_editors(images[0], found[0].first, found[0].last)
    return images


def show_in_image_editors(img: bpy.types.Image, first: int, last: int) -> None:
    """Show ``img`` in every open Image Editor too, frame-synced."""
    wm = bpy.context.window_manager
    for window in wm.windows if wm is not None else ():
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                space = area.spaces.active
                space.image = img
                _sync(space.image_user, first, last)
                area.tag_redraw()


def on_frame(scene: bpy.types.Scene, meta: dict, name: str, path: Path, frame: int, camera: str) -> None:
    """A render job's frame arrived at ``path``: update its folder's image and show it on ``camera`` (and on
    the cameras that showed this folder before) as the frames so far.

    ``meta`` is the job's bookkeeping (``output_dir`` given, ``frames_by_folder`` / ``cameras_by_folder`` kept
    here), so that no folder is scanned for every frame.
    """
    out_dir = Path(meta["output_dir"]).resolve()
    folder = path.parent.resolve()
    files = meta.setdefault("frames_by_folder", {}).setdefault(str(folder), {})
    files[frame] = path
    cams = meta.setdefault("cameras_by_folder", {}).setdefault(str(folder), [])
    if camera and camera not in cams:
        cams.append(camera)
    frames = FolderFrames(folder, sorted(files.items()))
    img = frames_image(frames, image_label(name, out_dir, folder))
    for cam in {*_cameras_for(frames, out_dir, cams), *cameras_showing(img)}:
        show_on_camera(cam, img, frames.first, frames.last)
    if len(meta["frames_by_folder"]) == 1:
        show_in_image_editors(img, frames.first, frames.last)


# ---------------------------------------------------------------------------------------------------------
# Which frames a one-click action takes
# ---------------------------------------------------------------------------------------------------------


def frames_for_camera(found: Sequence[FolderFrames], out_dir: Path, camera: bpy.types.Object | None
                      ) -> FolderFrames:
    """The folder of ``found`` that ``camera`` rendered (a rig: the camera's sub-folder), else the first."""
    if camera is not None:
        bg = camera_background(camera.data)
        img = bg.image if bg is not None else None
        for frames in found:
            if img is not None and folder_image(frames.folder) == img:
                return frames
        for frames in found:
            if frames.folder != out_dir.resolve() and frames.folder.name == camera_folder_name(camera.name):
                return frames
    return found[0]


def job_frames(scene: bpy.types.Scene, out_dir: Path, name: str) -> tuple[FolderFrames, bpy.types.Image]:
    """The frames of a render job's folder that the scene camera shows (a rig: the scene camera's own), and
    their image (loaded when needed).

    Raises:
        ValueError: when the folder holds no frames.
    """
    out_dir = out_dir.resolve()
    found = scan_frames(out_dir)
    frames = frames_for_camera(found, out_dir, scene.camera)
    return frames, frames_image(frames, image_label(name, out_dir, frames.folder))


# ---------------------------------------------------------------------------------------------------------
# Compositor
# ---------------------------------------------------------------------------------------------------------


def compositor_tree(scene: bpy.types.Scene) -> bpy.types.NodeTree:
    """The scene's compositing node tree, made as Blender makes it when there is none (Render Layers into the
    Composite node; 5.0+: into the node group's output)."""
    if hasattr(scene, "compositing_node_group"):  # Blender 5.0+: a node group assigned to the scene
        tree = scene.compositing_node_group
        if tree is None:
            tree = bpy.data.node_groups.new("Compositor Nodes", "CompositorNodeTree")
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            out = tree.nodes.new("NodeGroupOutput")
            layers = tree.nodes.new("CompositorNodeRLayers")
            layers.location, out.location = (-300, 0), (300, 0)
            tree.links.new(layers.outputs["Image"], out.inputs[0])
            scene.compositing_node_group = tree
        return tree
    scene.use_nodes = True  # 4.x: creates the default tree (Render Layers -> Composite)
    return scene.node_tree


def _output_node(tree: bpy.types.NodeTree) -> bpy.types.Node:
    """The node the compositor's result goes to: the Composite node (4.x) or the group output (5.0+), made
    when missing."""
    kind = "COMPOSITE" if bpy.app.version < (5, 0, 0) else "GROUP_OUTPUT"
    node = next((n for n in tree.nodes if n.type == kind and getattr(n, "is_active_output", True)), None)
    if node is not None:
        return node
    if kind == "COMPOSITE":
        return tree.nodes.new("CompositorNodeComposite")
    if not any(i.item_type == "SOCKET" and i.in_out == "OUTPUT" for i in tree.interface.items_tree):
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    return tree.nodes.new("NodeGroupOutput")


def _alpha_over_sockets(node: bpy.types.Node):
    """(background, foreground) inputs of an Alpha Over node (4.x: two inputs named Image; 5.0+: named)."""
    if "Background" in node.inputs:
        return node.inputs["Background"], node.inputs["Foreground"]
    images = [s for s in node.inputs if s.name == "Image"]
    return images[0], images[1]


def to_compositor(scene: bpy.types.Scene, img: bpy.types.Image, first: int, last: int
                  ) -> tuple[bpy.types.Node, bpy.types.Node]:
    """Put the frames into the compositor: an Image node (frame-synced) alpha-overed onto what went into the
    output (the Render Layers), its result into the output and the Viewers that showed the render.

    Created on the first call; later calls update the Image node's image and frames and leave the wiring (and
    the artist's changes to it) alone. Returns ``(image node, alpha over node)``.
    """
    tree = compositor_tree(scene)
    image_node, mix = tree.nodes.get(IMAGE_NODE), tree.nodes.get(MIX_NODE)
    if image_node is None:
        image_node = tree.nodes.new("CompositorNodeImage")
        image_node.name = image_node.label = IMAGE_NODE
    image_node.image = img
    _sync(image_node, first, last)
    if mix is None:
        mix = tree.nodes.new("CompositorNodeAlphaOver")
        mix.name = mix.label = MIX_NODE
        out = _output_node(tree)
        target = out.inputs[0]
        source = target.links[0].from_socket if target.is_linked else None
        if source is None:  # nothing into the output yet: the render itself
            layers = next((n for n in tree.nodes if n.type == "R_LAYERS"), None) or \
                tree.nodes.new("CompositorNodeRLayers")
            source = layers.outputs["Image"]
        back = _alpha_over_sockets(mix)[0]
        viewers = [link.to_socket for link in tree.links if link.from_socket == source
                   and link.to_node.type == "VIEWER"]
        tree.links.new(source, back)
        tree.links.new(mix.outputs["Image"], target)
        for socket in viewers:  # a Viewer showed the render: it shows the composite now
            tree.links.new(mix.outputs["Image"], socket)
        mix.location = (out.location[0] - 200, out.location[1])
        out.location = (out.location[0] + 100, out.location[1])
        image_node.location = (mix.location[0] - 300, mix.location[1] - 250)
    if not any(link.from_node == image_node for link in tree.links):
        # A PNG's node has an "Image" output; a multilayer EXR's has one per pass, the combined one first.
        colour = image_node.outputs.get("Image") or image_node.outputs.get("Combined") or image_node.outputs[0]
        tree.links.new(colour, _alpha_over_sockets(mix)[1])
    return image_node, mix


# ---------------------------------------------------------------------------------------------------------
# Sequencer
# ---------------------------------------------------------------------------------------------------------


def _strips(editor: bpy.types.SequenceEditor):
    return editor.strips if hasattr(editor, "strips") else editor.sequences  # 4.4+ / 4.2


def _strips_all(editor: bpy.types.SequenceEditor):
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def _held_files(frames: FolderFrames) -> list[str]:
    """One file name per scene frame from the first to the last: a frame rendered every n frames is held
    until the next, so the strip keeps the scene's timing."""
    names = []
    by_frame = dict(frames.files)
    current = frames.first_file.name
    for f in range(frames.first, frames.last + 1):
        current = by_frame[f].name if f in by_frame else current
        names.append(current)
    return names


def strip_span(strip) -> tuple[int, int]:
    """``(first frame, frame after the last)`` a strip shows (5.0+ calls them handles)."""
    if hasattr(strip, "left_handle"):
        return strip.left_handle, strip.right_handle
    return strip.frame_final_start, strip.frame_final_end


def _free_channel(editor: bpy.types.SequenceEditor, first: int, last: int) -> int:
    """The lowest channel with no strip between ``first`` and ``last`` (inclusive)."""
    used = {s.channel for s in _strips_all(editor) if strip_span(s)[0] <= last and strip_span(s)[1] > first}
    return next(c for c in range(1, 129) if c not in used)


def to_sequencer(scene: bpy.types.Scene, img: bpy.types.Image, frames: FolderFrames) -> bpy.types.Strip:
    """Put the frames into the sequencer as one image strip (named like the image) over the scene frames they
    were rendered for. A second call updates that strip (files, start, length) in its channel."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    files = _held_files(frames)
    strip = _strips_all(editor).get(img.name)
    if strip is not None and strip.type != "IMAGE":
        raise ValueError(f"the sequencer strip '{img.name}' is not an image strip; rename it first")
    directory = _blend_path(frames.folder) if bpy.data.filepath else str(frames.folder)
    if strip is None:
        channel = _free_channel(editor, frames.first, frames.last)
        strip = _strips(editor).new_image(name=img.name, filepath=str(frames.first_file), channel=channel,
                                          frame_start=frames.first, fit_method="FIT")
        for name in files[1:]:
            strip.elements.append(name)
    else:
        while len(strip.elements) > 1:
            strip.elements.pop(index=len(strip.elements) - 1)
        strip.elements[0].filename = files[0]
        for name in files[1:]:
            strip.elements.append(name)
        # The whole sequence at the frames it was rendered for (5.2 renamed these: content start and trims).
        if hasattr(strip, "content_start"):
            strip.content_start = frames.first
            strip.content_trim_start = strip.content_trim_end = 0
        else:
            strip.frame_start = frames.first
            strip.frame_offset_start = strip.frame_offset_end = 0
    strip.directory = directory.rstrip("/\\") + "/"
    strip.blend_type = "ALPHA_OVER"  # the frames' alpha shows the strips below through
    return strip
