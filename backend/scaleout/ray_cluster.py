"""Starting or joining Ray for the server, always with Ray's token authentication (Ray 2.52 and later).

Who can reach a Ray cluster can run any code on it, as the user who runs it, and read every job's files. A
Ray cluster listens on the machine's network address, not only on loopback, even one that ``ray.init`` starts
for a single process; so the server never runs Ray without ``RAY_AUTH_MODE=token``:

* ``serve --workers N`` starts a local Ray cluster with a token of its own: ``--ray-token-file`` (default
  ``WORK_DIR/keys/ray_auth_token``), made with 256 random bits and mode 0600 on first use. Every process of the
  cluster gets it from the environment (``RAY_AUTH_TOKEN_PATH``); the dashboard, when asked for, asks for it.
* ``serve --ray-address HOST:PORT`` joins a cluster that was started with ``RAY_AUTH_MODE=token``: the token
  comes from ``--ray-token-file``, else from Ray's own places (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``). Before joining, the server checks that the cluster refuses a driver without a
  token, and refuses to use one that lets anyone in: a token sent to an open cluster protects nothing.

The token authenticates; it does not encrypt. Between hosts, run the cluster on a network you trust or
inside a VPN/WireGuard tunnel, as Ray's documentation says.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backend

log = logging.getLogger("nerfart.scaleout")

RAY_VERSION = "2.60.0"  # requirements.txt pins this; token authentication needs 2.52 or later
TOKEN_FILE_NAME = "ray_auth_token"
PACKAGE_ROOT = Path(backend.__file__).resolve().parents[1]
# The top-level packages a job imports from this repository (torch and the rest come from each host's Python).
CODE_PACKAGES = ("backend", "protocol", "captures")
DEFAULT_OBJECT_STORE_BYTES = 512 * 2**20  # messages are small; Ray's default takes 30 % of the memory
PROBE_WAIT_S = 10  # how long the check for an open cluster tries to reach it
PROBE_TIMEOUT_S = 120.0  # beyond that: the check's own start-up (importing Ray)
AUTH_REFUSAL = "Unauthenticated"  # what Ray's GCS client logs when the cluster refuses its token (or none)
TOKEN_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass(frozen=True)
class RayConfig:
    """How the server runs its jobs on Ray.

    Attributes:
        workers: a local cluster: jobs at once (required without ``address``); joining: the most jobs at once
            (None: as many as the cluster's GPUs hold, at ``gpus_per_job`` each).
        address: ``HOST:PORT`` of the Ray cluster to join (its GCS, as ``ray start --head`` prints it); None:
            start a local cluster.
        gpus_per_job: GPUs each job's task asks for (fractions share a card). None: locally ``min(1, GPUs /
            workers)``; joining, 1; 0 on the CPU.
        token_file: the token (a local cluster's is made if missing); None when joining: Ray's own places.
        dashboard: start Ray's dashboard with a local cluster (on 127.0.0.1:8265; it needs ``ray[default]``).
        object_store_bytes: a local cluster's object store.
        max_retries: times Ray runs a job's task again after its worker process or node died.
        cancel_grace_s: how long a cancelled job may take to stop at a step boundary before its worker
            process is killed.
        stop_timeout_s: how long a stopping server waits for its running jobs to save and end ``interrupted``.
    """

    workers: int | None = None
    address: str | None = None
    gpus_per_job: float | None = None
    token_file: Path | None = None
    dashboard: bool = False
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES
    max_retries: int = 3
    cancel_grace_s: float = 30.0
    stop_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)  # more environment variables for the job's tasks


@dataclass(frozen=True)
class RayRuntime:
    """The Ray the server is connected to, as the executor uses it.

    Attributes:
        capacity: jobs run at once.
        gpus_per_job, cpus_per_job: each job task's resources.
        task_device: what the runners get (``cuda`` when each task has a GPU share, else ``cpu``).
        where: for ``hello_reply`` and the log, e.g. ``Ray local, 0.5 GPU each``.
        runtime_env: Ray's runtime environment of the tasks (the repository's code).
    """

    capacity: int
    gpus_per_job: float
    cpus_per_job: float
    task_device: str
    where: str
    runtime_env: dict[str, Any]


def ensure_token_file(path: Path) -> Path:
    """The local cluster's token file, made (256 random bits, hex, mode 0600) if it does not exist.

    Raises:
        ValueError: a file that exists but is empty, or that others may read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        log.info("made a Ray token for this backend's cluster in %s", path)
    check_token_file(path)
    return path


def check_token_file(path: Path) -> None:
    """Raises ValueError for a token file that cannot be read, is empty, or that other users may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the Ray token file {path}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"the Ray token file {path} is empty")
    if os.name == "posix" and mode & 0o077:
        raise ValueError(f"the Ray token file {path} may be read by other users (mode {mode & 0o777:o}); "
                         f"chmod 600 {path}")


def token_source(config: RayConfig) -> str:
    """Where the token for joining a cluster comes from, for the log.

    Raises:
        ValueError: no token anywhere Ray looks, with how to get one.
    """
    if config.token_file is not None:
        check_token_file(Path(config.token_file).expanduser())
        return str(config.token_file)
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        check_token_file(path)
        return str(path)
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        check_token_file(default)
        return str(default)
    raise ValueError("joining a Ray cluster needs its token: give --ray-token-file FILE (on the head node, "
                     "'ray get-auth-token' prints it), or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, or copy it to "
                     "~/.ray/auth_token")


def set_token_environment(config: RayConfig) -> str:
    """Turn on token authentication for this process and the Ray processes it starts; returns the token's
    source. Must run before ``ray.init``."""
    os.environ["RAY_AUTH_MODE"] = "token"
    if config.address is None:
        if config.token_file is None:
            raise ValueError("a local Ray cluster needs a token file")
        path = ensure_token_file(Path(config.token_file))
        os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
        source = str(path)
    else:
        source = token_source(config)
        if config.token_file is not None:
            os.environ.pop("RAY_AUTH_TOKEN", None)
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(Path(config.token_file).expanduser().resolve())
    try:  # Ray caches the token per process: a second server in one process (the tests) must not reuse it
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass
    return source


def refuses_strangers(address: str, wait_s: int = PROBE_WAIT_S) -> bool:
    """Whether the Ray cluster at ``address`` refuses a driver that has no token.

    Runs ``ray.init(address)`` in a child process with token authentication off and no token anywhere (an
    empty home folder): a cluster that lets it in would let in anyone who reaches it. Only a refusal that Ray's
    own authentication gave (``Unauthenticated``) counts as one.

    Raises:
        ValueError: the cluster could not be reached at all (nothing can be told about it).
    """
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k not in (*TOKEN_ENV, "RAY_ADDRESS")}
        # How long the driver tries to reach the cluster's GCS (Ray's default: 20 s).
        env.update(RAY_AUTH_MODE="disabled", HOME=home, RAY_gcs_server_port_wait_time_s=str(wait_s))
        code = ("import ray\n"
                f"ray.init(address={address!r}, log_to_driver=False, configure_logging=False)\n"
                "print('ADMITTED', flush=True)\n"
                "ray.shutdown()\n")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        # Watched line by line: the driver would go on trying for ``wait_s`` after the first refusal.
        timer = threading.Timer(wait_s + PROBE_TIMEOUT_S, proc.kill)
        timer.start()
        seen: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("ADMITTED"):
                    return False
                if AUTH_REFUSAL in line:
                    return True
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    raise ValueError(f"could not reach the Ray cluster at {address} (is its head running there, and may this "
                     f"machine reach it?): {''.join(seen).strip()[-500:]}")


def start_ray(config: RayConfig, device: str) -> RayRuntime:
    """Start a local Ray cluster or join one (see the module docstring); returns what the executor needs.

    Restores this process's SIGINT and SIGTERM handlers afterwards (``ray.init`` replaces SIGTERM's).

    Raises:
        ValueError: no token, an open cluster, a bad worker count, or Ray could not start or connect.
    """
    if config.address is None and (config.workers is None or config.workers < 1):
        raise ValueError("--workers N: give 1 or more (jobs run at once on a local Ray cluster)")
    if config.workers is not None and config.workers < 1:
        raise ValueError(f"--workers {config.workers}: give 1 or more")
    if config.gpus_per_job is not None and not 0 <= config.gpus_per_job <= 64:
        raise ValueError(f"--gpus-per-job {config.gpus_per_job}: give a number from 0 to 64")
    source = set_token_environment(config)
    if config.address is not None and not refuses_strangers(config.address):
        raise ValueError(f"the Ray cluster at {config.address} lets in drivers without a token: anyone who reaches "
                         "it could run code there and read every job. Start it with RAY_AUTH_MODE=token on every "
                         "node (see the README's 'Several GPUs')")
    import ray

    if ray.__version__ != RAY_VERSION:
        log.warning("Ray %s is installed; this backend is tested with Ray %s", ray.__version__, RAY_VERSION)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    runtime_env = task_runtime_env(config)
    try:
        if config.address is None:
            gpus = _local_gpus() if device.startswith("cuda") else 0
            context = ray.init(address="local", num_cpus=max(config.workers or 1, os.cpu_count() or 1), num_gpus=gpus,
                     object_store_memory=config.object_store_bytes, include_dashboard=config.dashboard,
                     dashboard_host="127.0.0.1", runtime_env=runtime_env, configure_logging=False,
                     log_to_driver=True)
        else:
            context = ray.init(address=config.address, runtime_env=runtime_env, configure_logging=False,
                               log_to_driver=True)
    except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError...
        hint = (" (the dashboard needs Ray's extras: pip install 'ray[default]==" + RAY_VERSION + "')"
                if config.dashboard and "dashboard" in str(exc).lower() else "")
        raise ValueError(f"could not {'start' if config.address is None else 'join'} Ray"
                         f"{'' if config.address is None else ' at ' + config.address}: {type(exc).__name__}: "
                         f"{str(exc)[:500]}{hint}") from None
    finally:
        if threading.current_thread() is threading.main_thread():  # only the main thread has handlers to set
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    on_gpu = device.startswith("cuda") and cluster_gpus > 0
    if config.gpus_per_job is not None:
        per_job = config.gpus_per_job if on_gpu else 0.0
    elif on_gpu:
        per_job = 1.0 if config.address is not None else min(1.0, cluster_gpus / (config.workers or 1))
    else:
        per_job = 0.0
    per_job = math.floor(per_job * 10_000) / 10_000  # Ray counts resources in ten-thousandths
    if config.workers is not None:
        capacity = config.workers
    elif per_job > 0:
        capacity = max(1, int(cluster_gpus / per_job + 1e-6))
    else:
        capacity = max(1, int(resources.get("CPU", 1.0)))
    where = (f"Ray {'local' if config.address is None else config.address}, "
             + (f"{per_job:g} GPU each" if per_job else "CPU"))
    log.info("Ray %s %s (token authentication on, token from %s): %d job(s) at once, %s; cluster resources: "
             "%s", ray.__version__, "started" if config.address is None else f"joined at {config.address}", source,
             capacity, f"{per_job:g} GPU each" if per_job else "on CPUs", _resources_text(resources))
    if config.dashboard and config.address is None:
        url = getattr(context, "dashboard_url", None) or "127.0.0.1:8265"
        log.info("Ray dashboard: http://%s (it asks for the token in %s)", url.removeprefix("http://"), source)
    return RayRuntime(capacity=capacity, gpus_per_job=per_job, cpus_per_job=1.0,
                      task_device="cuda" if per_job > 0 else "cpu", where=where, runtime_env=runtime_env)


def task_runtime_env(config: RayConfig) -> dict[str, Any]:
    """The job tasks' runtime environment: this repository's code, and ``config.env``.

    A local cluster's workers import it from here (``PYTHONPATH``); a joined cluster's get the packages
    uploaded by Ray (``py_modules``), so that every host runs the server's version of the code. Their Python
    and its libraries (torch, open_clip...) are each host's own.
    """
    env_vars = dict(config.env)
    if config.address is None:
        paths = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env_vars["PYTHONPATH"] = os.pathsep.join(paths)
        return {"env_vars": env_vars}
    return {"py_modules": [str(PACKAGE_ROOT / name) for name in CODE_PACKAGES], "env_vars": env_vars}


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _resources_text(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU")}
    return ", ".join(f"{v:g} {k}" for k, v in sorted(shown.items())) or "none"
