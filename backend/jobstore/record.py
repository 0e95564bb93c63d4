"""A job's record: what ``<work dir>/jobs/<job id>/job.json`` holds."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, fields
from typing import Any

INPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
JOB_ID = INPUT_NAME  # the same rule for job folders (new ids are 16 hex digits); a folder named otherwise is no job


@dataclass
class JobRecord:
    """What ``job.json`` holds. ``owner`` is who submitted it: ``key:<CURVE public key>``, ``id:<client id>``
    (without CURVE; advisory), ``rid:<routing id hex>`` (a client without an id) or ``cli`` (command line).
    ``host`` is the network address the submit came from (told by the operating system, not by the client;
    ``""`` for the command line): the queue shares its turns between hosts, then between owners."""

    job_id: str
    kind: str
    params: dict[str, Any]
    owner: str
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stage: str = ""
    step: int = 0
    total: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # upload name -> file name in inputs/
    resumes: int = 0  # times it was queued again by 'resume'; > 0 makes its runner continue from a checkpoint
    host: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """A record from ``job.json``; keys of a newer backend are ignored, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
