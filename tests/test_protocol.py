"""The wire protocol: schema, framing and signing, without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import protocol
from protocol import Limits, Message, ProtocolError, Signer, decode, encode
from protocol.schema import CAMERA, JOB_PARAMS, MESSAGES, Field

ROOT = Path(__file__).resolve().parents[1]


def sample_value(f: Field, msg: Message, rng: np.random.Generator) -> Any:
    """A valid value for a schema field (arrays and blobs become real buffers of ``msg``)."""
    if f.choices:
        return f.choices[int(rng.integers(len(f.choices)))]
    lo = 0 if f.min is None else f.min
    if f.kind == "str":
        return "näme-" + str(int(rng.integers(1000)))
    if f.kind == "int":
        return int(lo) + int(rng.integers(3))
    if f.kind == "float":
        return float(lo) + 0.5
    if f.kind == "bool":
        return bool(rng.integers(2))
    if f.kind == "float_map":
        return {"loss": 0.25, "psnr": 31.5}
    if f.kind == "str_list":
        return ["a", "b"]
    if f.kind == "matrix4":
        return np.eye(4).tolist()
    if f.kind == "array":
        return msg.add_array(rng.standard_normal((5, 3)).astype(np.float32))
    if f.kind == "blob":
        return msg.add_blob(rng.bytes(100), "png")
    if f.kind == "dict":
        return sample_object(f.item, msg, rng) if f.item else {"k": 1}
    if f.kind == "list":
        if f.item is CAMERA:
            return [sample_camera()]
        if f.item:
            return [sample_object(f.item, msg, rng)]
        return [1, 2]
    return 1


def sample_object(fields: tuple[Field, ...], msg: Message, rng: np.random.Generator) -> dict[str, Any]:
    return {f.name: sample_value(f, msg, rng) for f in fields}


def sample_camera() -> dict[str, Any]:
    return {"name": "Camera.001", "frame": 12, "c2w": np.eye(4).tolist(), "fx": 800.0, "fy": 800.0,
            "cx": 480.0, "cy": 270.0, "width": 960, "height": 540}


def sample_message(msg_type: str, rng: np.random.Generator) -> Message:
    msg = Message(msg_type, {})
    msg.content = sample_object(MESSAGES[msg_type].fields, msg, rng)
    if msg_type == "submit":
        kind = msg.content["kind"]
        msg.content["params"] = sample_object(JOB_PARAMS[kind], msg, rng)
        msg.content["inputs"] = {"capture": msg.add_blob(rng.bytes(64), "zip")}
    return msg


@pytest.mark.parametrize("msg_type", sorted(MESSAGES))
def test_every_message_type_round_trips(msg_type: str) -> None:
    rng = np.random.default_rng(0)
    msg = sample_message(msg_type, rng)
    msg.parent_id = "parent-1"
    msg.session = "s1"
    out = decode(encode(msg))
    assert out.type == msg_type
    assert out.content == json.loads(json.dumps(msg.content))
    assert out.msg_id == msg.msg_id and out.parent_id == "parent-1" and out.session == "s1"
    assert [bytes(b) for b in out.buffers] == [bytes(b) for b in msg.buffers]


@pytest.mark.parametrize("kind", sorted(JOB_PARAMS))
def test_every_job_kind_params_validate(kind: str) -> None:
    rng = np.random.default_rng(1)
    msg = Message("submit", {"kind": kind})
    msg.content["params"] = sample_object(JOB_PARAMS[kind], msg, rng)
    protocol.validate_content("submit", msg.content)
    with pytest.raises(ProtocolError) as err:
        protocol.validate_params(kind, {**msg.content["params"], "stpes": 3})
    assert err.value.field == "params.stpes"


def test_large_binary_payloads_travel_as_raw_frames() -> None:
    rng = np.random.default_rng(2)
    vertices = rng.standard_normal((2_000_000, 3)).astype(np.float32)  # 24 MB
    faces = rng.integers(0, 2_000_000, (1_000_000, 3), dtype=np.int32)  # 12 MB
    colors = rng.integers(0, 255, (2_000_000, 4), dtype=np.uint8)
    msg = Message("mesh", {"job_id": "j1"})
    msg.content.update(vertices=msg.add_array(vertices), faces=msg.add_array(faces), colors=msg.add_array(colors))
    frames = encode(msg)
    assert len(frames[3]) < 1000, "content JSON must hold specs only, never the payload"
    out = decode(frames)
    np.testing.assert_array_equal(out.array(out.content["vertices"]), vertices)
    np.testing.assert_array_equal(out.array(out.content["faces"]), faces)
    np.testing.assert_array_equal(out.array(out.content["colors"]), colors)


def test_signed_messages_reject_tampering_and_replay() -> None:
    signer = Signer(b"secret")
    msg = Message("progress", {"job_id": "j", "stage": "training", "step": 1, "total": 10})
    msg.content["preview"] = msg.add_blob(b"\x89PNG....", "png")
    frames = encode(msg, signer)
    assert decode(frames, Signer(b"secret")).content["step"] == 1
    tampered = list(frames)
    tampered[-1] = b"\x89PNG...!"  # the signature covers the buffers too
    with pytest.raises(ProtocolError) as err:
        decode(tampered, Signer(b"secret"))
    assert err.value.code == "unauthorized"
    with pytest.raises(ProtocolError):
        decode(frames, Signer(b"other key"))
    checker = Signer(b"secret")
    decode(frames, checker)
    with pytest.raises(ProtocolError, match="replayed"):
        decode(frames, checker)


def test_the_signature_covers_frame_boundaries_and_the_session() -> None:
    msg = Message("progress", {"job_id": "j", "stage": "s", "step": 1, "total": 2}, to_session="backend-run-1")
    msg.add_blob(b"abcd", "png")
    msg.add_blob(b"efgh", "png")
    frames = encode(msg, Signer(b"k"))
    out = decode(frames, Signer(b"k"))
    assert out.to_session == "backend-run-1" and [bytes(b) for b in out.buffers] == [b"abcd", b"efgh"]
    moved = [*frames[:4], b"abcde", b"fgh"]  # the same bytes, one moved across the boundary
    appended = [*frames, b""]
    for tampered in (moved, appended):
        with pytest.raises(ProtocolError) as err:
            decode(tampered, Signer(b"k"))
        assert err.value.code == "unauthorized"
    # The header's to_session is signed like the rest of it.
    header = json.loads(frames[2])
    header["to_session"] = "backend-run-2"
    with pytest.raises(ProtocolError, match="signature"):
        decode([*frames[:2], json.dumps(header).encode(), *frames[3:]], Signer(b"k"))


@pytest.mark.parametrize(("header", "content", "code", "field"), [
    ({"msg_id": "\ud800"}, b"{}", "malformed", "header"),
    ({}, b'{"job_id": "\\udfff"}', "malformed", "content"),
    ({}, b'{"\\udbff": 1}', "malformed", "content"),
    ({}, b'{"x":' + b"[" * 33 + b"]" * 33 + b"}", "malformed", "content"),
    ({}, b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "malformed", "content"),
    ({}, b'{"x": {"y": [1, 1e400]}}', "invalid_field", "x.y[1]"),
    ({}, b'{"x": -1e400}', "invalid_field", "x"),
    ({}, b'{"x": 9223372036854775808}', "invalid_field", "x"),
    ({}, b'{"x": NaN}', "malformed", "content"),
])
def test_strict_json_refuses_what_broke_the_backend(header: dict, content: bytes, code: str, field: str) -> None:
    frames = _frames("status", {})
    frames[2] = json.dumps({**json.loads(frames[2]), **header}).encode()
    frames[3] = content
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert (err.value.code, err.value.field) == (code, field)


def test_strict_json_keeps_what_is_fine() -> None:
    frames = _frames("status", {})
    frames[3] = b'{"x": "\\ud83d\\ude00", "y": 9223372036854775807, "z": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert decode(frames).content["x"] == "\U0001f600"  # an escaped pair is fine: only lone surrogates are not


def test_what_cannot_be_sent_is_a_protocol_error_on_the_sending_side() -> None:
    for content in ({"job_id": "\ud800"}, {"job_id": "j", "x": float("inf")}):
        with pytest.raises(ProtocolError):
            encode(Message("cancel", content))


def test_job_parameters_refuse_unknown_fields_at_every_level_and_inputs_their_own_buffer() -> None:
    camera = {**sample_camera(), "lens": {"mm": 50}}
    with pytest.raises(ProtocolError) as err:
        decode(_frames("submit", {"kind": "render", "params": {"source_job": "j", "cameras": [camera]}}))
    assert err.value.field == "params.cameras[0].lens"
    msg = Message("submit", {"kind": "reconstruct", "params": {}})
    shared = msg.add_blob(b"\0" * 100, "zip")
    msg.content["inputs"] = {"a": shared, "b": shared}
    with pytest.raises(ProtocolError, match="name the same frame"):
        decode(encode(msg))
    msg.content["inputs"] = {f"i{k}": msg.add_blob(b"x", "zip") for k in range(17)}
    with pytest.raises(ProtocolError, match="at most 16 inputs"):
        decode(encode(msg))


def test_stylize_shape_freedom_is_a_number_from_0_to_the_backends_maximum() -> None:
    from backend.stylize.loop import SHAPE_FREEDOM_MAX

    base = {"source_job": "j", "prompt": "a marble statue"}
    for value in (0, 0.1, 0.25, SHAPE_FREEDOM_MAX):
        protocol.validate_params("stylize", {**base, "shape_freedom": value})
    protocol.validate_params("stylize", {**base, "shape_freedom": 0.5, "colour_only": True})  # accepted, ignored
    for value, why in ((0.6, "must be at most 0.5, got 0.6"), (-0.1, "must be at least 0, got -0.1"),
                       (2, "must be at most 0.5, got 2"), (True, "must be a number, got boolean"),
                       ("0.2", "must be a number, got string"), (None, "must not be null"),
                       (float("nan"), "must be finite")):
        with pytest.raises(ProtocolError) as err:
            protocol.validate_params("stylize", {**base, "shape_freedom": value})
        assert (err.value.code, err.value.field) == ("invalid_field", "params.shape_freedom"), value
        assert err.value.message == f"field 'params.shape_freedom' {why}", value
    # The former cell count is refused by name, so an old client learns the shape would not be what it asked.
    with pytest.raises(ProtocolError) as err:
        protocol.validate_params("stylize", {**base, "geometry_growth": 2})
    assert err.value.field == "params.geometry_growth" and "unknown parameter" in err.value.message
    # On the wire too: a submit carrying it is refused by decode, naming the field.
    with pytest.raises(ProtocolError) as err:
        decode(_frames("submit", {"kind": "stylize", "params": {**base, "shape_freedom": 0.75}}))
    assert err.value.field == "params.shape_freedom"


def test_render_takes_an_optional_placement_matrix_and_the_exr_format() -> None:
    cam = {"name": "c", "c2w": np.eye(4).tolist(), "fx": 10.0, "fy": 10.0, "cx": 4.0, "cy": 4.0, "width": 8,
           "height": 8}
    base = {"source_job": "j", "cameras": [cam]}
    placement = np.diag([0.25, 0.25, 0.25, 1.0]).tolist()
    protocol.validate_params("render", {**base, "format": "exr", "depth": True, "placement": placement})
    protocol.validate_params("render", base)  # both optional: PNG, capture-world units
    for value in ([[1.0] * 4] * 3, [[float("nan")] * 4] * 4, "identity", None):
        with pytest.raises(ProtocolError) as err:
            protocol.validate_params("render", {**base, "placement": value})
        assert (err.value.code, err.value.field) == ("invalid_field", "params.placement"), value
    with pytest.raises(ProtocolError) as err:
        protocol.validate_params("render", {**base, "format": "tiff"})
    assert err.value.field == "params.format"


def test_extract_mesh_textured_options_are_checked() -> None:
    base = {"source_job": "j"}
    protocol.validate_params("extract_mesh", base)  # all optional: older clients are unaffected
    for size in (512, 1024, 2048, 4096):
        protocol.validate_params("extract_mesh", {**base, "mesh_format": "glb", "texture_size": size,
                                                  "target_faces": 40000})
    protocol.validate_params("extract_mesh", {**base, "mesh_format": "ply", "target_faces": -1})
    for field, value, why in (("texture_size", 1000, "must be one of 512, 1024, 2048, 4096; got 1000"),
                              ("texture_size", "2048", "must be an integer, got string"),
                              ("mesh_format", "obj", "must be one of glb, ply; got 'obj'"),
                              ("target_faces", -2, "must be at least -1, got -2")):
        with pytest.raises(ProtocolError) as err:
            protocol.validate_params("extract_mesh", {**base, field: value})
        assert err.value.message == f"field 'params.{field}' {why}", value
    # A textured mesh message carries the GLB as a blob and no arrays.
    msg = Message("mesh", {"job_id": "j1", "file": "mesh.glb", "format": "glb"})
    msg.content["glb"] = msg.add_blob(b"glTF....", "glb")
    back = decode(encode(msg))
    assert bytes(back.blob(back.content["glb"])) == b"glTF...."


@pytest.mark.parametrize(("frames", "code"), [
    ([b"junk"], "malformed"),
    ([protocol.DELIMITER, b"", b"{", b"{}"], "malformed"),
    ([protocol.DELIMITER, b"", b"[]", b"{}"], "malformed"),
    ([protocol.DELIMITER, b"", b'{"v":1}', b"{}"], "malformed"),
])
def test_malformed_frames_give_typed_errors(frames: list[bytes], code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == code


def _frames(msg_type: str, content: Any, buffers: tuple[bytes, ...] = (), v: int = protocol.PROTOCOL_VERSION
            ) -> list[bytes]:
    header = {"v": v, "msg_id": "m1", "msg_type": msg_type, "session": "", "date": 0.0, "parent_id": None}
    return [protocol.DELIMITER, b"", json.dumps(header).encode(), json.dumps(content).encode(), *buffers]


def test_invalid_fields_are_named() -> None:
    with pytest.raises(ProtocolError) as err:
        decode(_frames("progress", {"job_id": "j", "stage": "s", "step": "many", "total": 3}))
    assert (err.value.code, err.value.field) == ("invalid_field", "step")
    with pytest.raises(ProtocolError) as err:
        decode(_frames("submit", {"kind": "render", "params": {"source_job": "j", "cameras": [
            {**sample_camera(), "width": 0}]}}))
    assert err.value.field == "params.cameras[0].width"
    with pytest.raises(ProtocolError) as err:
        decode(_frames("submit", {"kind": "render", "params": {"source_job": "j", "cameras": [
            sample_camera(), {**sample_camera(), "c2w": [[1, 0, 0, 0]] * 3}]}}))
    assert err.value.field == "params.cameras[1].c2w"
    with pytest.raises(ProtocolError) as err:
        decode(_frames("frame", {"job_id": "j", "index": 0, "camera_name": "c", "width": 1, "height": 1,
                                 "image": {"buffer": 3, "format": "png"}}))
    assert "frame 3" in err.value.message
    with pytest.raises(ProtocolError) as err:
        decode(_frames("mesh", {"job_id": "j", "vertices": {"buffer": 0, "dtype": "float32", "shape": [2, 3]},
                                "faces": {"buffer": 0, "dtype": "int32", "shape": [0, 3]},
                                "colors": {"buffer": 0, "dtype": "uint8", "shape": [0, 4]}}, (b"x" * 5,)))
    assert "need 24" in err.value.message


def test_nan_is_rejected_on_the_wire() -> None:
    frames = _frames("progress", {"job_id": "j", "stage": "s", "step": 1, "total": 3})
    frames[3] = b'{"job_id":"j","stage":"s","step":1,"total":3,"eta_s":NaN}'
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == "malformed"
    with pytest.raises(ProtocolError):
        encode(Message("progress", {"job_id": "j", "stage": "s", "step": 1, "total": 3, "eta_s": float("nan")}))


def test_limits_reject_oversized_input_before_parsing() -> None:
    small = Limits(max_frames=6, max_content_bytes=100, max_message_bytes=10_000)
    with pytest.raises(ProtocolError) as err:
        decode(_frames("heartbeat", {"pad": "x" * 200}), limits=small)
    assert err.value.code == "too_large"
    with pytest.raises(ProtocolError) as err:
        decode(_frames("heartbeat", {}, (b"x" * 20_000,)), limits=small)
    assert err.value.code == "too_large"
    with pytest.raises(ProtocolError) as err:
        decode(_frames("heartbeat", {}, (b"",) * 5), limits=small)
    assert err.value.code == "too_large"


def test_unknown_type_and_version() -> None:
    with pytest.raises(ProtocolError) as err:
        decode(_frames("launch_missiles", {}))
    assert err.value.code == "unknown_type"
    with pytest.raises(ProtocolError) as err:
        decode(_frames("status", {}, v=protocol.PROTOCOL_VERSION + 1))
    assert err.value.code == "version_mismatch"
    # A hello of another version decodes, so that the server can answer it precisely.
    future = protocol.PROTOCOL_VERSION + 1
    assert decode(_frames("hello", {"protocol_version": future, "client": "future"}, v=future)).type == "hello"


def test_extra_content_fields_are_ignored() -> None:
    out = decode(_frames("cancel", {"job_id": "j", "reason": "added in a later version"}))
    assert out.content["job_id"] == "j"


def test_spec_md_tables_match_the_schema() -> None:
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    from protocol.spec import spec_markdown

    assert spec == spec_markdown(), "SPEC.md is stale: regenerate it with python -m protocol.spec"


def test_protocol_imports_nothing_but_stdlib_numpy_zmq() -> None:
    import subprocess
    import sys

    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] in ('torch', 'bpy', 'backend', 'blender_addon'):\n"
            "        raise ImportError('forbidden import ' + name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import protocol\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
