"""What to tell the artist, in the panel's own words, where the backend's facts alone would leave them stuck.

Pure Python (tested without Blender): a tiny or empty mesh, a backend error that names command-line options or
cache paths, a backend that stopped answering, and the settings a queued prompt will run with.
"""

from __future__ import annotations

from typing import Any

# A head at the default Resolution (256) has tens of thousands of vertices; a few hundred means the surface
# is a blob or a fragment, not the subject.
TINY_MESH_VERTICES = 200


def mesh_warning(vertices: int, resolution: int = 256, keep_largest: bool = True, decimate: float = 1.0) -> str:
    """Why a mesh of ``vertices`` vertices is too small to be the subject, and what to change; "" when it is
    not.

    The backend meshes where the model's density exceeds a fixed surface level (backend/outputs/mesh.py): a
    model trained too briefly barely reaches that level, so only a few cells are inside the surface; with
    Largest Part Only, a head that fell apart into pieces keeps only its biggest piece.
    """
    if vertices >= max(TINY_MESH_VERTICES, resolution // 2):
        return ""
    what = "an empty mesh" if vertices <= 0 else f"only {vertices} vertices"
    tips = ["the model's density reaches the surface level in only a few places: the reconstruction is probably "
            "too short or failed; reconstruct longer (Capture ▸ Quality Default or more Steps) and check its PSNR"]
    if keep_largest:
        tips.append("if the head fell apart into pieces, turn off Outputs ▸ Mesh ▸ Largest Part Only")
    if resolution < 128:
        tips.append(f"raise Resolution (now {resolution})")
    if decimate < 0.5:
        tips.append(f"raise Decimate (now keeps {decimate:.0%} of the faces)")
    return f"Tiny mesh, {what}: " + "; ".join(tips) + "."


# Backend messages that speak of the command line or cache folders, turned into the add-on's fields.
CLIP_WEIGHTS_MISSING = "CLIP weights"
NO_SURFACE = "no surface:"


def in_panel_words(message: str) -> str:
    """A backend error as the add-on shows it: the field to set and to what, then the backend's own text.

    The backend's message is written for the command line (``--clip-pretrained``, cache folders); an artist
    in Blender fixes it in the panel, so the first line says where. Unknown messages pass unchanged.
    """
    if message.startswith(CLIP_WEIGHTS_MISSING) and "not available" in message:
        return ("The backend has no CLIP weights for this model. In Stylize ▸ CLIP Weights, enter the path of an "
                "open_clip checkpoint file on the backend's disk (e.g. open_clip_model.safetensors), or leave it "
                "empty after filling the backend's cache once with 'python -m backend.stylize.fetch_weights --fetch' on "
                "the backend machine (it needs network access); 'random' runs an unstyled test.\n"
                f"Backend: {message}")
    if message.startswith(NO_SURFACE):
        return ("No surface to mesh: the model's density never reaches the surface level. The reconstruction is "
                "probably too short or failed: reconstruct longer (Capture ▸ Quality Default or more Steps), then "
                f"Extract Mesh again.\nBackend: {message}")
    return message


def lost_text(answered: bool, local_exit: str = "") -> str:
    """What the panel says while the backend does not answer.

    Args:
        answered: a backend answered on this connection before it went silent (else it never did).
        local_exit: the local backend process's exit message, when the add-on started it and it ended.
    """
    if local_exit:
        return (f"{local_exit[:1].upper()}{local_exit[1:]}: its running jobs stopped and show as interrupted once "
                "it runs again (Start, then Resume them from their checkpoint).")
    if not answered:
        return ("No backend answered at this address. Is it running? Start it (or the local backend) or fix the "
                "address in the add-on preferences; the add-on keeps trying.")
    return ("The backend stopped answering: it may have stopped, or the network dropped. Reconnecting by itself; "
            "if it is still running, its jobs go on and reattach when it answers.")


def queued_settings_text(item: Any) -> str:
    """The settings a queued prompt runs with (``NERFART_PG_queued_style``: fixed when it was added), in one
    line, e.g. ``strength 0.50, colour only, CLIP ViT-B-32/openai``."""
    parts = [f"strength {item.strength:.2f}"]
    if item.iterations > 0:
        parts.append(f"{item.iterations} iterations")
    if item.colour_only:
        parts.append("colour only")
    elif item.shape_freedom > 0:
        parts.append(f"shape freedom {item.shape_freedom:.2f}")
    clip = item.clip_model.strip() or "default CLIP"
    parts.append(f"CLIP {clip}" + (f"/{item.clip_pretrained.strip()}" if item.clip_pretrained.strip() else ""))
    if item.source_text.strip() and item.source_text.strip() != "photo":
        parts.append(f"from '{item.source_text.strip()}'")
    if item.negative_prompts.strip():
        parts.append("negatives")
    return ", ".join(parts)


def batch_done_text(counts: dict[str, int], output_folder: str, summary: str = "") -> str:
    """The line that says a batch ended: how many renders were done and failed, and where the outputs are."""
    done = counts.get("done", 0)
    failed = sum(n for state, n in counts.items() if state != "done")
    text = f"Batch finished: {done} render(s) done" + (f", {failed} failed" if failed else "")
    return text + f"; outputs in {output_folder}" + (f" (summary {summary})" if summary else "")
