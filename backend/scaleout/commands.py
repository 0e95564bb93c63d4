"""``serve``'s options for running jobs on Ray: ``--workers N`` (a local Ray cluster) or ``--ray-address``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .ray_cluster import TOKEN_FILE_NAME, RayConfig


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out on Ray (see the README's 'Several GPUs')")
    g.add_argument("--workers", type=int, metavar="N", help="run up to N jobs at once as Ray tasks on a local Ray "
                   "cluster that this command starts and stops; N above the number of GPUs shares them (2 on one "
                   "GPU: half a GPU each). With --ray-address: at most N at once. Default: one job at a time on a "
                   "thread of this process, no Ray")
    g.add_argument("--ray-address", metavar="HOST:PORT", help="join the Ray cluster whose head is there (what "
                   "'ray start --head' prints); it must have been started with RAY_AUTH_MODE=token")
    g.add_argument("--gpus-per-job", type=float, metavar="G", help="GPUs each job's task asks Ray for (0.5: two "
                   "jobs share a GPU); default: GPUs / N on a local cluster, 1 when joining, 0 with --device cpu")
    g.add_argument("--ray-token-file", metavar="FILE", help="the Ray cluster's token: a local cluster's is made "
                   f"here if missing (default: KEYS_DIR/{TOKEN_FILE_NAME}); joining, the cluster's token (default: "
                   "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, as Ray looks for it)")
    g.add_argument("--ray-dashboard", action="store_true", help="with --workers: start Ray's dashboard on "
                   "127.0.0.1:8265 (it asks for the token; needs the ray[default] extras)")


def ray_config(args: argparse.Namespace, keys_dir: Path) -> RayConfig | None:
    """``serve``'s Ray settings from its options; None for the single-process server.

    Raises:
        ValueError: a worker count below 1, or Ray options without --workers or --ray-address.
    """
    if args.workers is None and args.ray_address is None:
        if args.gpus_per_job is not None or args.ray_token_file or args.ray_dashboard:
            raise ValueError("--gpus-per-job, --ray-token-file and --ray-dashboard go with --workers N or "
                             "--ray-address HOST:PORT")
        return None
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give 1 or more (without --workers, one job runs at a time "
                         "in this process)")
    if args.ray_address is not None and args.ray_dashboard:
        raise ValueError("--ray-dashboard starts the dashboard of a local cluster; a joined cluster's dashboard is "
                         "its head node's (ray start --head --include-dashboard=true)")
    if args.ray_token_file:
        token_file: Path | None = Path(args.ray_token_file).expanduser()
    else:
        token_file = keys_dir / TOKEN_FILE_NAME if args.ray_address is None else None
    return RayConfig(workers=args.workers, address=args.ray_address, gpus_per_job=args.gpus_per_job,
                     token_file=token_file, dashboard=args.ray_dashboard)
