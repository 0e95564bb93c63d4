"""A small ROUTER that speaks the real protocol (the repository's ``protocol`` package) like the backend does,
with scripted jobs, for testing the add-on's bridge without a GPU.

It answers ``hello``, ``heartbeat``, ``submit`` (then streams progress with a preview, frames for render jobs,
a mesh for extract_mesh jobs: a textured GLB or a vertex-coloured PLY as asked, and a result), ``cancel``,
``status`` and ``attach``. A job is held in "running" while :attr:`StubBackend.hold` is set; a prompt or
capture path containing ``FAIL`` makes the job fail, ``REJECT`` makes the submit fail with an ``error``.
:meth:`silence` stops all answers (a vanished backend). A reconstruction's outputs hold ``subject_bounds`` as
the backend's do: those it was sent, else :attr:`StubBackend.detected_bounds` as they were at its submit (what
it "found"); :meth:`StubBackend.finish` lets one held job finish;
:meth:`params_of` gives the parameters each job of a kind was submitted with.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import zmq

from protocol import PROTOCOL_VERSION, Message, decode, encode, make_reply, split_identities

# What the real backend sends for a textured mesh (written by its GLB writer; see data/).
TEXTURED_QUAD_GLB = Path(__file__).with_name("data") / "textured_quad.glb"
# The subject bounds the stub "finds" (capture world): turned about Z by 30 degrees, sized unevenly, off-centre,
# so that a test sees every part of the map come through.
DETECTED_BOUNDS = {"shape": "box", "matrix": [[0.25980762, -0.1, 0.0, 0.1],
                                               [0.15, 0.17320508, 0.0, -0.2],
                                               [0.0, 0.0, 0.4, 0.05],
                                               [0.0, 0.0, 0.0, 1.0]]}


def png_bytes(w: int, h: int, rgba=(200, 100, 50, 255)) -> bytes:
    row = b"\x00" + bytes(rgba) * w
    raw = row * h

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class StubBackend:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.session = uuid.uuid4().hex
        self.received: list[Message] = []
        self.jobs: dict[str, dict] = {}
        self.hold = threading.Event()
        self.fail_code = "job_failed"  # the error a FAIL job ends with
        self.fail_message = "the stub was asked to fail"
        self.detected_bounds: dict | None = DETECTED_BOUNDS  # None: outputs without subject_bounds (older backend)
        self.silent = threading.Event()
        self._finish_now: set[str] = set()  # jobs to finish even while held (see finish)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # Control ------------------------------------------------------------------------------------------------

    def silence(self) -> None:
        self.silent.set()

    def speak(self) -> None:
        self.silent.clear()

    def finish(self, job_id: str) -> None:
        """Let one held job finish (the others stay held), so that results arrive in the order a test needs."""
        with self._lock:
            self._finish_now.add(job_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.ctx.term()

    def of_type(self, msg_type: str) -> list[Message]:
        with self._lock:
            return [m for m in self.received if m.type == msg_type]

    def params_of(self, kind: str) -> list[dict]:
        """The parameters of every job of ``kind`` submitted so far, oldest first."""
        return [m.content["params"] for m in self.of_type("submit") if m.content["kind"] == kind]

    # Server loop ----------------------------------------------------------------------------------------------

    def _send(self, ident: list[bytes], msg: Message) -> None:
        msg.session = self.session
        self.sock.send_multipart([*ident, *encode(msg)])

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                frames = self.sock.recv_multipart()
                ident, body = split_identities(frames)
                msg = decode(body)
                with self._lock:
                    self.received.append(msg)
                if not self.silent.is_set():
                    self._handle(ident, msg)
            if not self.silent.is_set():
                with self._lock:
                    released, self._finish_now = self._finish_now, set()
                for job_id, job in list(self.jobs.items()):
                    if job["state"] == "running" and (not self.hold.is_set() or job_id in released):
                        self._finish(job_id, job)

    def _handle(self, ident: list[bytes], msg: Message) -> None:
        t, c = msg.type, msg.content
        if t == "hello":
            self._send(ident, make_reply(msg, "hello_reply", {
                "protocol_version": PROTOCOL_VERSION, "backend_version": "stub-1", "session": self.session,
                "gpu": {"name": "Stub GPU", "memory_total": 80 * 2**30, "memory_free": 70 * 2**30},
                "clip_models": ["ViT-B-32", "ViT-B-16"], "job_kinds": ["reconstruct", "stylize", "render",
                                                                     "extract_mesh"],
                "queue_length": len(self.jobs)}))
        elif t == "heartbeat":
            self._send(ident, Message("heartbeat", {}))
        elif t == "submit":
            text = str(c["params"].get("prompt", "")) + str(c["params"].get("capture_path", ""))
            if "REJECT" in text:
                self._send(ident, make_reply(msg, "error", {"code": "invalid_field", "message":
                                                            "field 'params.prompt' is rejected by the stub",
                                                            "field": "params.prompt", "job_id": None}))
                return
            job_id = uuid.uuid4().hex[:12]
            self.jobs[job_id] = {"ident": ident, "kind": c["kind"], "params": c["params"], "state": "running",
                                 "msg": msg, "fail": "FAIL" in text, "created": time.time(),
                                 "detected_bounds": self.detected_bounds}  # what it "finds", as it is now
            self._send(ident, make_reply(msg, "accepted", {"job_id": job_id, "kind": c["kind"], "position": 0}))
            preview = Message("progress", {"job_id": job_id, "stage": "training", "step": 1, "total": 4,
                                           "eta_s": 3.0, "losses": {"loss": 0.5}, "message": "step 1"})
            preview.content["preview"] = preview.add_blob(png_bytes(8, 6), "png")
            self._send(ident, preview)
        elif t == "cancel":
            job = self.jobs.get(c["job_id"])
            if job is not None and job["state"] == "running":
                job["state"] = "cancelled"
                self._send(ident, make_reply(msg, "cancel_reply", {"job_id": c["job_id"], "state": "cancelled"}))
                self._send(ident, Message("result", {"job_id": c["job_id"], "state": "cancelled", "outputs": {}}))
        elif t == "status":
            self._send(ident, make_reply(msg, "status_reply", {"jobs": self._records()}))
        elif t == "attach":
            job = self.jobs.get(c["job_id"])
            if job is None:
                self._send(ident, make_reply(msg, "error", {"code": "unknown_job", "message":
                                                            f"no job {c['job_id']}", "job_id": c["job_id"]}))
                return
            job["ident"] = ident
            self._send(ident, make_reply(msg, "status_reply", {"jobs": self._records(c["job_id"])}))
            if job["state"] != "running":
                self._send(ident, Message("result", {"job_id": c["job_id"], "state": job["state"],
                                                     "outputs": job.get("outputs", {})}))

    def _records(self, only: str | None = None) -> list[dict]:
        return [{"job_id": k, "kind": j["kind"], "state": j["state"], "created": j["created"]}
                for k, j in self.jobs.items() if only is None or k == only]

    def add_finished_job(self, kind: str = "stylize") -> str:
        job_id = uuid.uuid4().hex[:12]
        self.jobs[job_id] = {"ident": [], "kind": kind, "params": {}, "state": "done", "fail": False,
                             "created": time.time(), "outputs": {"checkpoint": "model.pt"}}
        return job_id

    def _outputs(self, job: dict) -> dict:
        """Result outputs shaped like the real runners' (backend/jobs/*.py), with fixed numbers."""
        params = job["params"]
        if job["kind"] == "reconstruct":
            out = {"train_psnr": 27.5, "heldout_psnr": 25.25, "steps": 4}
            bounds = params.get("subject_bounds") or job.get("detected_bounds")  # found or given, as the backend's
            if bounds is not None:
                out["subject_bounds"] = bounds
            return out
        if job["kind"] == "stylize":
            out = {"loss_total": 0.5, "loss_image": 0.375, "loss_directional": 0.125, "prompt": params["prompt"],
                   "prompt_driven": params.get("clip_pretrained") != "random"}
            if not out["prompt_driven"]:
                out["note"] = "random CLIP weights were requested: the result is NOT driven by the prompt"
            return out
        if job["kind"] == "render":
            return {"frames": [f"frames/{i:04d}.png" for i in range(len(params["cameras"]))],
                    "count": len(params["cameras"])}
        if job["kind"] == "extract_mesh":
            if params.get("mesh_format") == "glb":
                return {"mesh": "mesh.glb", "vertices": 4, "faces": 2}  # data/textured_quad.glb
            return {"mesh": "mesh.ply", "vertices": 3, "faces": 1}
        return {}

    def _finish(self, job_id: str, job: dict) -> None:
        ident = job["ident"]
        if job["fail"]:
            job["state"] = "failed"
            self._send(ident, Message("result", {"job_id": job_id, "state": "failed", "outputs": {},
                                                 "error": {"code": self.fail_code,
                                                           "message": self.fail_message}}))
            return
        if job["kind"] == "render":
            for i, cam in enumerate(job["params"]["cameras"]):
                m = Message("frame", {"job_id": job_id, "index": i, "camera_name": cam["name"],
                                      "frame": cam.get("frame", 0), "width": cam["width"],
                                      "height": cam["height"]})
                m.content["image"] = m.add_blob(png_bytes(cam["width"], cam["height"]), "png")
                self._send(ident, m)
        if job["kind"] == "extract_mesh" and job["params"].get("mesh_format") == "glb":
            m = Message("mesh", {"job_id": job_id, "file": "mesh.glb", "format": "glb"})
            m.content["glb"] = m.add_blob(TEXTURED_QUAD_GLB.read_bytes(), "glb")
            self._send(ident, m)
        elif job["kind"] == "extract_mesh":
            m = Message("mesh", {"job_id": job_id})
            m.content["vertices"] = m.add_array(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32))
            m.content["faces"] = m.add_array(np.array([[0, 1, 2]], np.int32))
            m.content["colors"] = m.add_array(np.full((3, 4), 200, np.uint8))
            self._send(ident, m)
        self._send(ident, Message("progress", {"job_id": job_id, "stage": "training", "step": 4, "total": 4}))
        job["state"] = "done"
        job["outputs"] = {"checkpoint": "model.pt", **self._outputs(job)}
        self._send(ident, Message("result", {"job_id": job_id, "state": "done", "outputs": job["outputs"]}))
