"""A batch: several prompts, each stylized once, each result rendered through several camera rigs. Pure
Python state; the bpy layer (:mod:`..batch_bpy`) submits the jobs and feeds their outcomes back here.

One :class:`BatchRender` per (prompt, rig) pair, each with its own output folder. A prompt's renders are
submitted when its stylization finishes (a render needs a finished source); a failed stylization fails its
renders with its reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .outputs import frame_range_text, write_summary

FINAL = ("done", "failed", "cancelled", "interrupted", "lost")


@dataclass
class BatchRender:
    """One (prompt, rig) render of a batch."""

    prompt: str
    rig: str
    frames: list[int]
    folder: str
    stylize_job: str = ""
    render_job: str = ""
    state: str = "waiting"  # waiting for its stylization, then rendering, then a final state
    files: int = 0
    error: str = ""

    def row(self) -> dict[str, Any]:
        """Its line in the summary."""
        return {**asdict(self), "frames": frame_range_text(self.frames), "folder": Path(self.folder).name,
                "path": self.folder}


@dataclass
class Batch:
    renders: list[BatchRender]
    output_folder: str
    reconstruction: str
    started: float = field(default_factory=time.time)
    finished_at: float | None = None
    summary: tuple[Path, Path] | None = None
    scene: str = ""  # the scene that started it (its Render Batch button waits while it runs)

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(r.prompt for r in self.renders))

    def of_prompt(self, prompt: str) -> list[BatchRender]:
        return [r for r in self.renders if r.prompt == prompt]

    @property
    def finished(self) -> bool:
        return all(r.state in FINAL for r in self.renders)

    def stylized(self, prompt: str, job_id: str, state: str, error: str = "") -> list[BatchRender]:
        """The prompt's stylization ended: returns its renders to submit now (none when it did not finish)."""
        renders = self.of_prompt(prompt)
        for r in renders:
            r.stylize_job = job_id
        if state == "done":
            return [r for r in renders if r.state == "waiting"]
        for r in renders:
            r.state, r.error = "failed", f"its stylization {state}" + (f": {error}" if error else "")
        return []

    def rendered(self, render: BatchRender, job_id: str, state: str, files: int, error: str = "") -> None:
        """A render of the batch ended with ``files`` frames written."""
        render.render_job, render.state, render.files, render.error = job_id, state, files, error

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.renders:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def status_line(self) -> str:
        done = sum(1 for r in self.renders if r.state == "done")
        failed = sum(1 for r in self.renders if r.state in FINAL and r.state != "done")
        text = f"batch: {done} of {len(self.renders)} render(s) done"
        return text + (f", {failed} failed" if failed else "")

    def write_summary(self) -> tuple[Path, Path]:
        """Write the JSON and text summaries into the output folder (once, when the batch has finished)."""
        self.finished_at = self.finished_at or time.time()
        summary = {"output_folder": self.output_folder, "reconstruction": self.reconstruction,
                   "started": _iso(self.started), "finished": _iso(self.finished_at),
                   "prompts": self.prompts, "counts": self.counts(), "renders": [r.row() for r in self.renders]}
        self.summary = write_summary(Path(self.output_folder), summary, self.started)
        return self.summary


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def parse_prompts(text: str) -> list[str]:
    """Prompts given as text: one per line, or separated by ``|`` (prompts often hold commas)."""
    return [p.strip() for line in text.splitlines() for p in line.split("|") if p.strip()]


def parse_names(text: str) -> list[str]:
    """Collection names separated by commas."""
    return [n.strip() for n in text.split(",") if n.strip()]
