"""Issue 19 item 2: rendered frames land where artists look. A render job's frames (from the scripted backend)
become the background image sequence of the camera they were rendered from, frame-synced; one image per output
folder, reloaded on a re-render, saved with the .blend; one click puts them into the compositor or the sequencer
(made once, updated after). Item 6: a render from an unsaved file says where its frames go."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy", reason="the bpy module (Blender as a Python module) is not installed")
pytest.importorskip("zmq")

from test_bpy_artist_workflow import add_camera, panel_labels, reconstruct_and_stylize  # noqa: E402

FRAMES_KEY = "nerfart_frames"


def strip_span(strip) -> tuple[int, int]:
    from nerfart_blender.frames_bpy import strip_span as span

    return span(strip)


def frame_images() -> list:
    return [i for i in bpy.data.images if i.get(FRAMES_KEY)]


def file_shown_at(image_user, image, frame: int) -> str:
    """The file Blender shows through ``image_user`` at scene ``frame``, as the viewport's draw code picks it.

    The viewport sets ``frame_current`` while drawing (``BKE_image_user_frame_calc``), which a background
    Blender never does; the same rule, for a non-cyclic sequence, is applied here and Blender itself turns the
    number into the file (``Image.filepath_from_user``)."""
    number = min(max(frame - image_user.frame_start + 1, 1), image_user.frame_duration) + image_user.frame_offset
    image_user.frame_current = number
    path = Path(bpy.path.abspath(image.filepath_from_user(image_user=image_user)))
    assert path.is_file(), path
    return path.name


def render_active(scene, tmp_path, first: int, last: int, overwrite: bool = False) -> object:
    out = scene.nerfart.outputs
    out.mode, out.use_scene_range, out.frame_start, out.frame_end = "ACTIVE", False, first, last
    out.output_dir = str(tmp_path / "renders")
    assert bpy.ops.nerfart.render(overwrite=overwrite) == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    assert ref.kind == "RENDER" and ref.state == "done"
    return ref


def make_rig(scene, names=("Front", "Side")):
    rig = bpy.data.collections.new("Turntable")
    scene.collection.children.link(rig)
    cams = []
    for name in names:
        cam = add_camera(scene, name)
        scene.collection.objects.unlink(cam)
        rig.objects.link(cam)
        cams.append(cam)
    return rig, cams


def test_frames_are_the_rendering_cameras_background_sequence(connected, stub, tmp_path):
    scene = bpy.context.scene
    cam = scene.camera = add_camera(scene)
    other = add_camera(scene, "Other Cam")  # not rendered from: it stays as it was
    reconstruct_and_stylize(scene, tmp_path)
    ref = render_active(scene, tmp_path, 3, 6)
    data = cam.data
    assert data.show_background_images and len(data.background_images) == 1
    bg = data.background_images[0]
    img = bg.image
    assert img is not None and img.name == f"NeRF-Art {ref.name}" and img.source == "SEQUENCE"
    assert Path(bpy.path.abspath(img.filepath)).parent == Path(ref.output_dir)
    assert (bg.display_depth, bg.alpha, bg.frame_method) == ("FRONT", 1.0, "STRETCH")
    assert bg.show_background_image and bg.image_user.use_auto_refresh and not bg.image_user.use_cyclic
    # Frame-synced: scene frame f shows frame_000f.png, for every rendered frame.
    for f in range(3, 7):
        assert file_shown_at(bg.image_user, img, f) == f"frame_{f:04d}.png"
    assert (bg.image_user.frame_start, bg.image_user.frame_duration, bg.image_user.frame_offset) == (3, 4, 2)
    assert img.use_fake_user and img.users >= 2  # the camera and the fake user
    assert not other.data.show_background_images and len(other.data.background_images) == 0
    # Load Frames later, with another camera active: the frames go back on the camera they were rendered from.
    scene.camera = other
    assert bpy.ops.nerfart.load_frames(job_id=ref.job_id) == {"FINISHED"}
    assert len(other.data.background_images) == 0 and cam.data.background_images[0].image == img
    assert frame_images() == [img]


def test_rerender_reloads_the_same_image(connected, stub, tmp_path):
    """Re-rendering into the same folder used to add .001 .. .004 copies of the image."""
    scene = bpy.context.scene
    cam = scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    first = render_active(scene, tmp_path, 1, 3)
    img = cam.data.background_images[0].image
    name = img.name
    for _ in range(3):
        again = render_active(scene, tmp_path, 1, 3, overwrite=True)
        assert again.output_dir == first.output_dir
    assert frame_images() == [img] and img.name == name and not any(i.name.startswith(f"{name}.") for i in
                                                                      bpy.data.images)
    assert len(cam.data.background_images) == 1 and cam.data.background_images[0].image == img
    # Load Frames from the Jobs list reloads that image too.
    assert bpy.ops.nerfart.load_frames(job_id=first.job_id) == {"FINISHED"}
    assert frame_images() == [img] and len(cam.data.background_images) == 1
    # Another frame range is another folder and another image; the camera's one NeRF-Art slot shows the newest
    # and the artist's own background image stays.
    own = cam.data.background_images.new()
    own.image = bpy.data.images.new("reference", 4, 4)
    render_active(scene, tmp_path, 2, 5)
    newer = [i for i in frame_images() if i != img]
    assert len(newer) == 1 and img.use_fake_user  # the earlier render stays in the file
    slots = [bg.image for bg in cam.data.background_images]
    assert slots == [newer[0], own.image]
    bg = cam.data.background_images[0]
    assert (bg.image_user.frame_start, bg.image_user.frame_duration, bg.image_user.frame_offset) == (2, 4, 1)


def test_rig_cameras_get_their_own_sequences_and_survive_save_and_reopen(connected, stub, tmp_path):
    """Rig frames had 0 users and vanished on save."""
    scene = bpy.context.scene
    rig, cams = make_rig(scene)
    reconstruct_and_stylize(scene, tmp_path)
    out = scene.nerfart.outputs
    out.mode, out.rig, out.rig_frames = "RIG", rig, "RANGE"
    out.use_scene_range, out.frame_start, out.frame_end = False, 1, 3
    out.output_dir = str(tmp_path / "renders")
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    for cam in cams:
        bg = cam.data.background_images[0]
        assert bg.image.name == f"NeRF-Art {ref.name} {cam.name}"
        assert Path(bpy.path.abspath(bg.image.filepath)) == Path(ref.output_dir) / cam.name / "frame_0001.png"
        assert file_shown_at(bg.image_user, bg.image, 2) == "frame_0002.png"
    assert len(frame_images()) == 2
    # One click for a rig takes the scene camera's frames.
    scene.camera = cams[1]
    assert bpy.ops.nerfart.frames_to_compositor() == {"FINISHED"}
    assert compositor_tree(scene).nodes["NeRF-Art Frames"].image == cams[1].data.background_images[0].image
    label = ref.name  # the file's data is gone once another file is opened: keep no references to it
    del ref, cams, bg, cam, out, rig, scene
    blend = tmp_path / "saved" / "shot.blend"
    blend.parent.mkdir()
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}
    bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
    assert bpy.ops.wm.open_mainfile(filepath=str(blend)) == {"FINISHED"}
    images = {i.name: i for i in bpy.data.images if i.get(FRAMES_KEY)}
    assert sorted(images) == [f"NeRF-Art {label} Front", f"NeRF-Art {label} Side"]
    for name in ("Front", "Side"):
        cam = bpy.data.objects[name]
        bg = cam.data.background_images[0]
        assert cam.data.show_background_images and bg.image == images[f"NeRF-Art {label} {name}"]
        assert bg.image.source == "SEQUENCE" and bg.image.use_fake_user
        assert Path(bpy.path.abspath(bg.image.filepath)).is_file()
    # The images survive even without a camera showing them (the fake user), and a later Load Frames reuses them.
    bpy.data.objects.remove(bpy.data.objects["Side"])
    del cam, bg, images
    assert bpy.ops.wm.save_mainfile() == {"FINISHED"}
    assert bpy.ops.wm.open_mainfile(filepath=str(blend)) == {"FINISHED"}
    assert len(frame_images()) == 2
    job_id = bpy.context.scene.nerfart.backend.jobs[-1].job_id
    assert bpy.ops.nerfart.load_frames(job_id=job_id) == {"FINISHED"}
    assert len(frame_images()) == 2


def compositor_tree(scene):
    return scene.compositing_node_group if hasattr(scene, "compositing_node_group") else scene.node_tree


def links_of(tree) -> set[tuple[str, str, str]]:
    return {(link.from_node.name, link.to_node.name, link.to_socket.identifier) for link in tree.links}


def test_compositor_gets_one_image_node_over_the_render(connected, stub, tmp_path):
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    render_active(scene, tmp_path, 2, 4)
    assert bpy.ops.nerfart.frames_to_compositor() == {"FINISHED"}
    tree = compositor_tree(scene)
    image_node, mix = tree.nodes["NeRF-Art Frames"], tree.nodes["NeRF-Art Alpha Over"]
    assert image_node.image == scene.camera.data.background_images[0].image
    assert (image_node.frame_start, image_node.frame_duration, image_node.frame_offset) == (2, 3, 1)
    assert image_node.use_auto_refresh
    layers = next(n for n in tree.nodes if n.type == "R_LAYERS")
    out = next(n for n in tree.nodes if n.type in ("COMPOSITE", "GROUP_OUTPUT"))
    back, front = ("Background", "Foreground") if "Background" in mix.inputs else ("Image", "Image_001")
    assert {(layers.name, mix.name, back), (image_node.name, mix.name, front),
            (mix.name, out.name, out.inputs[0].identifier)} <= links_of(tree)
    assert not any(link.from_node == layers and link.to_node == out for link in tree.links)
    count = len(tree.nodes)
    # A second click after another render updates the node; nothing is added.
    render_active(scene, tmp_path, 5, 9)
    assert bpy.ops.nerfart.frames_to_compositor() == {"FINISHED"}
    assert len(tree.nodes) == count and tree.nodes["NeRF-Art Frames"] == image_node
    assert image_node.image == scene.camera.data.background_images[0].image
    assert (image_node.frame_start, image_node.frame_duration, image_node.frame_offset) == (5, 5, 4)


def rendered_pixel(scene, frame: int, path: Path) -> tuple[int, ...]:
    """Render ``frame`` with Cycles (1 sample, the scene's tiny size) through the compositor; the centre pixel
    of the written PNG as 8-bit RGBA."""
    scene.frame_set(frame)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path), check_existing=False)
    w, h = img.size
    i = ((h // 2) * w + w // 2) * 4
    pixel = tuple(round(v * 255) for v in img.pixels[i:i + 4])
    bpy.data.images.remove(img)
    return pixel


def test_compositor_puts_each_frame_over_the_render(connected, stub, tmp_path):
    """The compositor's result, rendered: scene frame f shows frame_000f.png where it is opaque and the render
    where it is clear (the empty scene renders black)."""
    from stub_backend import png_bytes

    scene = bpy.context.scene
    scene.camera = add_camera(scene)  # 32 x 24 px
    reconstruct_and_stylize(scene, tmp_path)
    ref = render_active(scene, tmp_path, 3, 5)
    colours = {3: (255, 0, 0, 255), 4: (0, 255, 0, 255), 5: (0, 0, 255, 0)}  # frame 5 is clear
    for f, rgba in colours.items():
        (Path(ref.output_dir) / f"frame_{f:04d}.png").write_bytes(png_bytes(32, 24, rgba))
    assert bpy.ops.nerfart.frames_to_compositor() == {"FINISHED"}
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"  # colours unchanged
    scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGBA"
    shown = {f: rendered_pixel(scene, f, tmp_path / f"composite_{f}.png") for f in colours}
    assert shown[3] == (255, 0, 0, 255) and shown[4] == (0, 255, 0, 255)
    assert shown[5][:3] == (0, 0, 0), shown  # the render through the clear frame


def test_compositor_keeps_the_artists_tree(connected, stub, tmp_path):
    """An existing tree: the frames go over what went into the output (here a Blur of the render)."""
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    render_active(scene, tmp_path, 1, 2)
    tree = bpy.data.node_groups.new("Mine", "CompositorNodeTree") if hasattr(scene, "compositing_node_group") \
        else None
    if tree is not None:
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        scene.compositing_node_group = tree
        out = tree.nodes.new("NodeGroupOutput")
        layers = tree.nodes.new("CompositorNodeRLayers")
    else:
        scene.use_nodes = True
        tree = scene.node_tree
        out = next(n for n in tree.nodes if n.type == "COMPOSITE")
        layers = next(n for n in tree.nodes if n.type == "R_LAYERS")
    blur = tree.nodes.new("CompositorNodeBlur")
    viewer = tree.nodes.new("CompositorNodeViewer")
    tree.links.new(layers.outputs["Image"], blur.inputs[0])
    tree.links.new(blur.outputs[0], out.inputs[0])
    tree.links.new(blur.outputs[0], viewer.inputs[0])
    assert bpy.ops.nerfart.frames_to_compositor() == {"FINISHED"}
    assert compositor_tree(scene) == tree
    mix = tree.nodes["NeRF-Art Alpha Over"]
    assert out.inputs[0].links[0].from_node == mix and viewer.inputs[0].links[0].from_node == mix
    assert mix.inputs[next(i for i, s in enumerate(mix.inputs) if s.type == "RGBA")].links[0].from_node == blur
    assert blur.inputs[0].links[0].from_node == layers


def test_sequencer_gets_one_strip_at_the_rendered_frames(connected, stub, tmp_path):
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    ref = render_active(scene, tmp_path, 3, 5)
    assert bpy.ops.nerfart.frames_to_sequencer() == {"FINISHED"}
    editor = scene.sequence_editor
    strips = list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)
    assert len(strips) == 1
    strip = strips[0]
    assert strip.type == "IMAGE" and strip.name == f"NeRF-Art {ref.name}"
    assert strip_span(strip) == (3, 6)
    assert [e.filename for e in strip.elements] == ["frame_0003.png", "frame_0004.png", "frame_0005.png"]
    assert Path(bpy.path.abspath(strip.directory)) == Path(ref.output_dir)
    # Re-rendered with more frames into the same folder name? Another range is another folder: the newest
    # render's strip is added once, then updated.
    ref2 = render_active(scene, tmp_path, 3, 5, overwrite=True)
    assert ref2.output_dir == ref.output_dir
    setattr(strip, "content_start" if hasattr(strip, "content_start") else "frame_start", 10)  # the artist's move
    assert bpy.ops.nerfart.frames_to_sequencer() == {"FINISHED"}
    strips = list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)
    assert len(strips) == 1 and strip_span(strips[0]) == (3, 6)
    # A newer render of other frames; the Jobs panel's button for the earlier one still takes the earlier one.
    newer = render_active(scene, tmp_path, 7, 8)
    assert bpy.ops.nerfart.frames_to_sequencer(job_id=ref.job_id) == {"FINISHED"}
    assert len(list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)) == 1
    assert bpy.ops.nerfart.frames_to_sequencer() == {"FINISHED"}  # the newest render, selected in the list
    spans = {s.name: strip_span(s) for s in (editor.strips_all if hasattr(editor, "strips_all")
                                              else editor.sequences_all)}
    assert spans == {f"NeRF-Art {ref.name}": (3, 6), f"NeRF-Art {newer.name}": (7, 9)}


def test_stepped_frames_hold_in_the_sequencer(connected, stub, tmp_path):
    """Frames rendered every 2nd frame: each is held until the next, so the strip keeps the scene timing."""
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    out = scene.nerfart.outputs
    out.frame_step = 2
    render_active(scene, tmp_path, 1, 5)
    assert bpy.ops.nerfart.frames_to_sequencer() == {"FINISHED"}
    editor = scene.sequence_editor
    strip = next(iter(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all))
    assert [e.filename for e in strip.elements] == ["frame_0001.png", "frame_0001.png", "frame_0003.png",
                                                    "frame_0003.png", "frame_0005.png"]
    assert strip_span(strip) == (1, 6)
    # Rendered through the sequencer: each scene frame shows the file rendered for it, or the one before.
    from stub_backend import png_bytes

    folder = Path(bpy.path.abspath(strip.directory))
    colours = {1: (255, 0, 0, 255), 3: (0, 255, 0, 255), 5: (0, 0, 255, 255)}
    for f, rgba in colours.items():
        (folder / f"frame_{f:04d}.png").write_bytes(png_bytes(32, 24, rgba))
    scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
    scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGBA"
    shown = [rendered_pixel(scene, f, tmp_path / f"sequence_{f}.png") for f in range(1, 6)]
    assert shown == [colours[1], colours[1], colours[3], colours[3], colours[5]]


def test_one_click_actions_need_a_render(connected, stub, tmp_path):
    with pytest.raises(RuntimeError, match="render frames first"):
        bpy.ops.nerfart.frames_to_compositor()
    with pytest.raises(RuntimeError, match="render frames first"):
        bpy.ops.nerfart.frames_to_sequencer()


def test_unsaved_file_says_where_frames_go(connected, stub, tmp_path, capfd):
    """Item 6: renders from an unsaved file went to the temporary folder without a word."""
    addon = connected
    scene = bpy.context.scene
    scene.camera = add_camera(scene)
    reconstruct_and_stylize(scene, tmp_path)
    out = scene.nerfart.outputs
    out.mode, out.use_scene_range, out.frame_start, out.frame_end = "ACTIVE", False, 1, 1
    assert out.output_dir == "//nerfart/renders/" and not bpy.data.filepath
    temp = Path(tempfile.gettempdir()) / "nerfart" / "nerfart" / "renders"
    text = "".join("".join(panel_labels(addon, "NERFART_PT_outputs")).split())  # wrapped: compare without spaces
    assert "".join(f"This file is not saved: frames go to {temp}".split()) in text
    assert "Savethe.blendfirst,orchooseanabsoluteOutputFolder" in text
    capfd.readouterr()
    assert bpy.ops.nerfart.render(overwrite=True) == {"FINISHED"}
    ref = scene.nerfart.backend.jobs[-1]
    assert Path(ref.output_dir).parent == temp
    printed = capfd.readouterr()
    said = " ".join((printed.out + printed.err).split())
    assert f"frames go to {temp}" in said and f"(this render: {ref.output_dir})" in said
    # Saved: the frames go beside the .blend and nothing is said.
    blend = tmp_path / "saved" / "shot.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    assert "not saved" not in " ".join(panel_labels(addon, "NERFART_PT_outputs"))
    assert bpy.ops.nerfart.render() == {"FINISHED"}
    ref = bpy.context.scene.nerfart.backend.jobs[-1]
    assert Path(ref.output_dir).parent == blend.parent / "nerfart" / "renders"
    img = bpy.context.scene.camera.data.background_images[0].image
    assert img.filepath.startswith("//nerfart/renders/")  # relative: the folder moves with the .blend
