"""Where the backend listens, and whether that is safe: only this machine unless asked, never the network
without CURVE unless asked explicitly. The server's client endpoint's."""

from __future__ import annotations

import ipaddress


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint`` (ipc, or tcp on a loopback address)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, an interface name or '*': reachable from other machines


def check_bind_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Refuse to listen beyond this machine unless asked to explicitly.

    Raises:
        ValueError: with the reason and the way out, for a non-loopback endpoint without ``allow_remote``
            or an endpoint that is not ``tcp://host:port`` / ``ipc://path``.
    """
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme != "tcp" or not host or not (port.isdigit() or port == "*"):
        raise ValueError(f"endpoint {endpoint!r} must look like tcp://127.0.0.1:5555 (or port * for any free port)")
    if not is_loopback_endpoint(endpoint) and not allow_remote:
        raise ValueError(
            f"refusing to listen on {endpoint}: it is reachable from other machines, and anyone who can reach "
            "it could submit jobs and read your captures. Listen on tcp://127.0.0.1:PORT and use an SSH "
            "tunnel, or pass --allow-remote (clients then need CURVE keys: see 'python -m backend keys').")


def check_transport_security(endpoint: str, curve: bool, insecure: bool) -> None:
    """A non-loopback endpoint needs CURVE (authentication and encryption) unless ``insecure`` says otherwise.

    Raises:
        ValueError: a remote endpoint without CURVE and without the explicit ``insecure`` opt-out.
    """
    if not curve and not insecure and not is_loopback_endpoint(endpoint):
        raise ValueError(
            f"refusing to listen on {endpoint} without CURVE: every message (captures, prompts, results) would "
            "cross the network unencrypted and any machine that reaches the port could use this GPU. Run with "
            "CURVE keys (the default of 'serve --allow-remote'; authorise clients with 'python -m backend keys "
            "authorize'), or pass --insecure on a network you trust completely.")
