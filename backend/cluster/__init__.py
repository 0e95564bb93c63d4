"""Scale-out: the backend's jobs on N worker processes, one per GPU, on one host or several.

The ZeroMQ guide's Majordomo pattern (MDP/0.2, rfc.zeromq.org/spec:18) with Paranoid Pirate heartbeats
(rfc.zeromq.org/spec:6): the server stays the one endpoint clients speak to, and hands its jobs to workers.

* :mod:`.mdp`: the worker sub-protocol's frames and constants;
* :mod:`.broker`: the broker, run by the server's socket thread (``serve --workers N``);
* :mod:`.worker`: a worker process (``python -m backend worker``);
* :mod:`.local`: starting, restarting and stopping the workers on the broker's own machine;
* :mod:`.commands`: the command line of both.
"""
