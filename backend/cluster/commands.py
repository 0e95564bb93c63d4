"""The command line of the cluster: ``serve --workers N`` and ``python -m backend worker``."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from . import mdp
from .broker import DEFAULT_WORKER_ENDPOINT, ClusterConfig
from .local import devices_for

KEY_ENV = ("NERFART_BROKER_PUBLIC_KEY", "NERFART_WORKER_PUBLIC_KEY", "NERFART_WORKER_SECRET_KEY")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """``serve``'s options for running jobs on worker processes."""
    g = p.add_argument_group("scale-out (see the README's 'Several GPUs')")
    g.add_argument("--workers", type=int, metavar="N", help="run jobs on N worker processes on this machine, one "
                   "per GPU (0: only workers that join with 'python -m backend worker'); default: on a thread of "
                   "this process, one job at a time")
    g.add_argument("--devices", help="with --workers: the device of each local worker, comma-separated and used in "
                   "turn, e.g. cuda:0,cuda:1 (a GPU may appear twice); default: every GPU in turn, or --device")
    g.add_argument("--worker-endpoint", default=DEFAULT_WORKER_ENDPOINT, help="with --workers: where workers "
                   "connect (default %(default)s, a free loopback port); another host's workers need "
                   "--allow-remote and CURVE worker keys ('keys new-worker')")


def cluster_config(args: argparse.Namespace, device: str, keys: Any) -> ClusterConfig:
    """``serve``'s cluster settings from its options; ``keys``: the server's keys when workers use CURVE.

    Raises:
        ValueError: a negative worker count or an unusable device list.
    """
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers}: give 0 or more")
    names = tuple(d for d in args.devices.split(",")) if args.devices else ()
    devices = devices_for(args.workers, device, names)
    worker_args = ["--min-free", args.min_free]
    if args.work_dir_quota:
        worker_args += ["--work-dir-quota", args.work_dir_quota]
    return ClusterConfig(worker_endpoint=args.worker_endpoint, devices=tuple(devices), curve=keys,
                         worker_args=tuple(worker_args))


def add_worker_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="join a backend's cluster (serve --workers) as a worker: run its jobs on "
                       "this machine's GPU")
    p.add_argument("--connect", required=True, help="the broker's worker endpoint, e.g. tcp://head-node:5556")
    p.add_argument("--work-dir", required=True, help="the work dir the backend uses, as this machine mounts it "
                   "(shared: job folders are read and written here)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (this worker then sees only GPU "
                   "K) (default %(default)s)")
    p.add_argument("--server-key", help="CURVE: the backend's public key, or its server.key file")
    p.add_argument("--worker-key", help="CURVE: this worker's secret certificate ('keys new-worker' makes one)")
    p.add_argument("--insecure", action="store_true", help="connect to another host without CURVE (the traffic "
                   "is unencrypted)")
    p.add_argument("--work-dir-quota", help="the most the work dir may hold, e.g. 200G (as the backend's)")
    p.add_argument("--min-free", default="256M", help="free space always left on the work dir's disk "
                   "(default %(default)s)")
    p.add_argument("--parent-pid", type=int, help="end when this process ends (set by serve --workers)")
    p.set_defaults(func=cmd_worker)


def worker_curve(args: argparse.Namespace) -> Any:
    """The worker's CURVE keys: from --server-key / --worker-key, else from the environment that ``serve
    --workers`` gives its local workers; None without either.

    Raises:
        ValueError: one of the two options without the other, or a key that cannot be read.
    """
    from backend.access import auth

    from .worker import WorkerCurve

    if args.server_key or args.worker_key:
        if not (args.server_key and args.worker_key):
            raise ValueError("CURVE needs both --server-key (the backend's public key) and --worker-key (this "
                             "worker's secret certificate, from 'python -m backend keys new-worker')")
        public, secret = auth.read_key_pair(args.worker_key)
        return WorkerCurve(auth.read_public_key(args.server_key), public, secret)
    if all(os.environ.get(name) for name in KEY_ENV):
        server_public, public, secret = (auth.parse_key(os.environ[name]) for name in KEY_ENV)
        return WorkerCurve(server_public, public, secret)
    return None


def cmd_worker(args: argparse.Namespace) -> int:
    from backend.access.endpoints import is_loopback_endpoint
    from backend.device import resolve_device
    from backend.jobstore.disk import parse_size

    from .worker import ClusterWorker, pin_cuda_device, worker_store

    try:
        device = resolve_device(pin_cuda_device(args.device))  # before torch touches CUDA
        quota = parse_size(args.work_dir_quota) if args.work_dir_quota else None
        min_free = parse_size(args.min_free)
        curve = worker_curve(args)
        if curve is None and not args.insecure and not is_loopback_endpoint(args.connect):
            raise ValueError(f"refusing to join {args.connect} without CURVE: job records, captures' paths and "
                             "results would cross the network unencrypted, and the backend would not let an "
                             "unauthorised worker in anyway. Give --server-key and --worker-key (make a worker key "
                             "on the backend's machine with 'python -m backend keys new-worker NAME'), or pass "
                             "--insecure on a network you trust completely")
        store = worker_store(args.work_dir, quota, min_free)
    except ValueError as exc:  # also CurveKeyError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot use the work dir {args.work_dir}: {exc}", file=sys.stderr)
        return 1
    from backend.jobs import default_runners

    shown_device = args.device if args.device.startswith("cuda:") else device
    worker = ClusterWorker(args.connect, store, default_runners(), device,
                           name=f"{socket.gethostname()[:100]}/{os.getpid()}/{shown_device}", curve=curve,
                           parent_pid=args.parent_pid, heartbeat_s=mdp.HEARTBEAT_INTERVAL_S)
    worker.install_signal_handlers()
    worker.run()
    return 0
