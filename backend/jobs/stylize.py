"""The ``stylize`` job: a reconstruction and a text prompt in, a stylized NeRF checkpoint out.

The checkpoint is an ordinary :class:`~backend.nerf.checkpoint.NeRFCheckpoint` (``checkpoint.pt``), so the
``render`` and ``extract_mesh`` jobs take a stylize job as their source unchanged. Next to it, ``stylize.json``
records the prompt and every setting used.

Order of work, so that mistakes surface before anything heavy runs: parameters (preset, prompt, strength,
CLIP name) -> the source job -> CLIP and perceptual weights (missing weights fail here with the
:class:`~backend.stylize.weights.WeightsUnavailableError` message) -> prompt lengths (CLIP's tokenizer) -> the
checkpoint -> stylization.

Every ``checkpoint_every`` iterations (the preset's) a resumable checkpoint (``F_sty``, optimizer, iteration,
random state) replaces ``checkpoint.pt``; a resumed job (``ctx.resuming``) renders ``I_src`` again and continues
from it at the next iteration. The finished ``checkpoint.pt`` holds no training state.

**Subject bounds (issue 20).** ``params.subject_bounds`` (capture-world form) or, when absent, the source
reconstruction's own bounds decide what is stylized: only the subject inside them, over a plain ground, while the
background keeps its reconstructed look (:mod:`backend.stylize.loop`). The stylized checkpoint stores the bounds
used (``subject``, model coordinates); the job's outputs give them in capture-world form (``subject_bounds``, None
without bounds) together with ``source_job``, the reconstruction a frame with the background takes everything
outside the bounds from (the same id as ``params.source_job``).

``clip_pretrained="random"`` is the explicitly requested test mode: random-initialised CLIP **and** perceptual
network. The job then runs the whole pipeline, but the result is not driven by the prompt; the progress
message and the outputs (``prompt_driven: false``) say so.
"""

from __future__ import annotations

import json
from typing import Any

from backend.jobstore.atomic import atomic_write_bytes
from backend.jobstore.context import JobContext, JobFailed

from .checkpoints import load_source_checkpoint, resume_checkpoint
from .reconstruct import preview_png
from .subject import as_subject

CHECKPOINT = "checkpoint.pt"
SETTINGS = "stylize.json"
RANDOM_WEIGHTS = "random"
NOT_PROMPT_DRIVEN = ("random CLIP and perceptual weights were requested (clip_pretrained='random'): this is the "
                     "unstyled test mode, the result is NOT driven by the prompt")


def config_from_params(params: dict[str, Any]) -> Any:
    """The :class:`~backend.stylize.loop.StylizeConfig` for a job's parameters (preset, then overrides).

    Raises:
        ValueError: a bad prompt or setting, naming it.
    """
    from backend.stylize.loop import preset_config

    negatives = params.get("negative_prompts")
    return preset_config(
        params.get("preset", "default"), params.get("prompt", ""), source_text=params.get("source_text"),
        negative_prompts=None if negatives is None else tuple(negatives), strength=params.get("strength"),
        iterations=params.get("iterations"), colour_only=params.get("colour_only"),
        shape_freedom=params.get("shape_freedom"), scale=params.get("scale"), seed=params.get("seed"))


def subject_for_job(params: dict[str, Any], ckpt_rec: Any) -> Any:
    """The subject bounds a stylize job uses (model coordinates): ``params.subject_bounds`` (capture-world form,
    converted with the reconstruction's normalization), else the reconstruction's own (``ckpt_rec.subject``),
    else None (the whole scene).

    Raises:
        JobFailed: bounds that cannot be used (the message says why).
    """
    from backend.nerf.subject import SubjectBounds, SubjectBoundsError
    from captures.normalize import Normalization

    given = params.get("subject_bounds")
    if given is None:
        return ckpt_rec.subject
    norm = ckpt_rec.normalization if ckpt_rec.normalization is not None else Normalization([0.0, 0.0, 0.0], 1.0)
    try:
        return SubjectBounds.from_world(given, norm)
    except SubjectBoundsError as exc:
        raise JobFailed(f"subject_bounds: {exc}") from exc


def subject_world(ckpt: Any) -> dict[str, Any] | None:
    """A checkpoint's subject bounds in the protocol's capture-world form, or None without bounds."""
    from captures.normalize import Normalization

    if ckpt.subject is None:
        return None
    norm = ckpt.normalization if ckpt.normalization is not None else Normalization([0.0, 0.0, 0.0], 1.0)
    return ckpt.subject.to_world(norm)


def check_clip_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is an open_clip model name."""
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = [m for m in known if m.lower().startswith(name.lower()[:5])][:8]
        raise ValueError(f"unknown CLIP model {name!r}; open_clip names look like 'ViT-B-32'"
                         + (f" (similar: {', '.join(close)})" if close else ""))


def load_loss_models(clip_name: str, clip_pretrained: str, perceptual_kind: str, device: str,
                     seed: int = 0) -> tuple[Any, Any, bool]:
    """CLIP and the perceptual loss for a job: ``(clip, perceptual, prompt_driven)``.

    ``clip_pretrained`` is an open_clip tag (``"openai"``), a checkpoint path, or ``"random"`` (random CLIP and
    random perceptual trunk, explicitly; ``prompt_driven`` is then False).

    Raises:
        WeightsUnavailableError: weights neither cached nor downloadable now.
        FileNotFoundError, ValueError: a bad path, tag or model name.
    """
    from backend.stylize.clip_model import load_clip
    from backend.stylize.perceptual import load_perceptual

    if clip_pretrained == RANDOM_WEIGHTS:
        clip = load_clip(clip_name, pretrained=None, device=device, random_init=True, random_seed=seed)
        perceptual = load_perceptual(perceptual_kind, device, random_init=True, random_seed=seed)
        return clip, perceptual, False
    clip = load_clip(clip_name, clip_pretrained, device=device)
    perceptual = load_perceptual(perceptual_kind, device)
    return clip, perceptual, True


def run_stylize(ctx: JobContext) -> dict[str, Any]:
    import dataclasses

    import torch

    from backend.nerf.checkpoint import save_checkpoint
    from backend.nerf.evaluate import render_image
    from backend.stylize.loop import TRAIN_STATE_KIND, StylizeProgress, stylize
    from backend.stylize.subject_render import render_image_in_subject
    from backend.stylize.weights import WeightsUnavailableError

    params = ctx.params
    clip_name = params.get("clip_model", "ViT-B-32")
    clip_pretrained = params.get("clip_pretrained", "openai")
    try:
        config = config_from_params(params)
        check_clip_name(clip_name)
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    ctx.source_job(params["source_job"], ("reconstruct",))  # unknown / unfinished / wrong kind: fail now

    ctx.progress("loading models", 0, 2, message=f"CLIP {clip_name} ({clip_pretrained})")
    try:
        clip, perceptual, prompt_driven = load_loss_models(clip_name, clip_pretrained, config.loss.perceptual,
                                                           ctx.device, config.seed)
    except (WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        # The weights error's message says what is missing and the three ways to provide it: shown verbatim.
        raise JobFailed(str(exc)) from exc
    templates = config.templates()
    try:
        clip.check_prompt(config.prompt, templates, what="prompt")
        clip.check_prompt(config.source_text, templates, what="source text")
        for i, text in enumerate(config.negative_prompts):
            clip.check_prompt(text, templates, what=f"negative prompt #{i + 1}")
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    note = "" if prompt_driven else NOT_PROMPT_DRIVEN
    ctx.progress("loading models", 1, 2, message=note)
    ctx.check_cancel()
    ckpt_rec = load_source_checkpoint(ctx, ("reconstruct",))
    # The bounds travel in the reconstruction handed to the loop; the stylized checkpoint keeps them.
    ckpt_rec = dataclasses.replace(ckpt_rec, subject=subject_for_job(params, ckpt_rec))
    if ckpt_rec.subject is not None:
        # The subject without the haze around it (seen through, keyed out): neither the losses nor the result see it.
        as_subject(ckpt_rec)
    resume, resume_note = resume_checkpoint(ctx, CHECKPOINT, TRAIN_STATE_KIND) if ctx.resuming else (None, "")
    if resume is not None:
        done = int(resume.train_state["done"]) if resume.train_state else config.resolved_iterations()
        resume_note_line = f"resuming at iteration {done} of {config.resolved_iterations()}"
    else:
        resume_note_line = resume_note
    ctx.progress("loading models", 2, 2, message="; ".join(t for t in (note, resume_note_line) if t))
    settings = {**config.to_dict(), "source_job": params["source_job"], "clip_model": clip_name,
                "clip_pretrained": clip_pretrained, "clip_source": clip.source,
                "perceptual_source": getattr(perceptual, "source", None), "prompt_driven": prompt_driven,
                "subject_bounds": subject_world(ckpt_rec)}
    atomic_write_bytes(ctx.outputs_dir / SETTINGS, json.dumps(settings, indent=1, default=str))

    def on_progress(p: StylizeProgress) -> None:
        if p.stage == "sources":
            ctx.progress("rendering sources", p.step, p.total, message=note)
            return
        if p.stage == "done":
            return
        ctx.progress("stylizing", p.step, p.total, eta_s=p.eta_s, losses=p.losses, metrics=p.metrics,
                     preview_png=None if p.preview is None else preview_png(p.preview), message=note)

    def on_checkpoint(ckpt: Any) -> None:
        # Overwritten in place (atomically), so an interrupted job keeps its latest state and resumes from it.
        save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
        ctx.checkpointed("stylizing", int(ckpt.metrics["stylize_iterations"]), config.resolved_iterations())

    if resume is not None and resume.train_state is None:
        # The stylization had finished (its final checkpoint is saved) when the job was interrupted: keep it.
        ckpt = resume
    else:
        try:
            ckpt = stylize(ckpt_rec, config, torch.device(ctx.device), on_progress, lambda: ctx.cancelled,
                           clip=clip, perceptual=perceptual, on_checkpoint=on_checkpoint, resume=resume)
        except ValueError as exc:
            raise JobFailed(str(exc)) from exc
        # Saved even when cancelled: the partly stylized model is kept, like a stopped reconstruction (with its
        # training state, so an interrupted job resumes from exactly here).
        save_checkpoint(ckpt, ctx.outputs_dir / CHECKPOINT)
        if ckpt.train_state is not None:
            ctx.checkpointed("stylizing", int(ckpt.train_state["done"]), config.resolved_iterations())
    ctx.check_cancel()
    view = ckpt.heldout_indices[0] if ckpt.heldout_indices else 0
    if ckpt.subject is not None:
        # The subject alone, as the stylization saw it (and as a render job returns it by default).
        rgba = render_image_in_subject(ckpt, ckpt.cameras, view, subject=ckpt.subject)
    else:
        rgba, _ = render_image(ckpt, ckpt.cameras, view)
    ctx.progress("done", 1, 1, metrics=ckpt.metrics, preview_png=preview_png(rgba.cpu().numpy()), message=note)
    outputs: dict[str, Any] = {k: float(v) for k, v in ckpt.metrics.items()}
    outputs.update({"checkpoint": CHECKPOINT, "settings": SETTINGS, "prompt": config.prompt,
                    "prompt_driven": prompt_driven, "iterations": int(ckpt.metrics["stylize_iterations"]),
                    "background": ckpt.background, "colour_only": config.colour_only,
                    "shape_freedom": config.shape_freedom, "source_job": params["source_job"],
                    "subject_bounds": subject_world(ckpt)})
    if not prompt_driven:
        outputs["note"] = NOT_PROMPT_DRIVEN
    if resume is not None:
        outputs["resumed_from_iteration"] = int(resume.train_state["done"]) if resume.train_state \
            else outputs["iterations"]
    if resume_note:
        outputs["resume_note"] = resume_note
    return outputs
