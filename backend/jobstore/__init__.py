"""The job-store layer: below both the front ends (the ZeroMQ server, the command line) and the executors.

One module per topic, each importing only those above it in this list:

* :mod:`.disk` -- the work dir's quota and free-space guard;
* :mod:`.atomic` -- writes that a crash never leaves half done;
* :mod:`.record` -- :class:`~.record.JobRecord`, what ``job.json`` holds;
* :mod:`.messages` -- the one place that builds every job message (``progress``, ``result``, ``status_reply``
  entries) and every error a job ends with (interrupted, out of memory, ...);
* :mod:`.lock` -- the lock a process holds on the folder of the job it runs;
* :mod:`.store` -- :class:`~.store.JobStore`, the records and folders on disk, read back after a crash;
* :mod:`.context` -- :class:`~.context.JobContext`, what a job runner gets;
* :mod:`.execute` -- :func:`~.execute.execute_job` and :func:`~.execute.finish_job`, the only writers of a final
  state, and resume;
* :mod:`.queue` -- :class:`~.queue.JobQueue`, the queued jobs in fair turns between hosts and owners;
* :mod:`.thread_worker` -- :class:`~.thread_worker.ThreadWorker`, the executor that runs jobs on a thread.

Nothing here imports the server, the cluster or Ray (``tests/test_layering.py`` checks it). Import from the
modules themselves; this package's ``__init__`` imports nothing, so that a runner importing
``backend.jobstore.context`` does not load the queue.
"""
