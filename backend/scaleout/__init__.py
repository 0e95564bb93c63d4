"""Scale-out on Ray: the server's jobs as Ray tasks, on this machine's GPUs or on a Ray cluster of many hosts.

``python -m backend serve`` runs jobs one at a time on a thread of its own. With ``--workers N`` it starts a
local Ray cluster and runs up to N jobs at once as Ray tasks (fractional GPUs: two tasks may share one card);
with ``--ray-address HOST:PORT`` it joins a Ray cluster started elsewhere (``ray start``, KubeRay, Slurm). The
server stays the one endpoint clients speak to; the protocol does not change.

* :mod:`.ray_cluster`: starting or joining Ray, always with token authentication;
* :mod:`.channel`: the actor that carries each job's messages to the server and its cancel to the task;
* :mod:`.task`: the Ray task that runs one job (the same :func:`~backend.jobstore.execute.execute_job` as the
  single-process server);
* :mod:`.executor`: the server's side: the queue, dispatch, retries' outcome, cancel and stop;
* :mod:`.commands`: the command-line options.
"""
