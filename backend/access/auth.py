"""CURVE keys of the backend: its own key pair, the client keys it trusts, and the ZAP handler that checks them.

ZeroMQ's CURVE mechanism encrypts the connection and authenticates both ends by their public keys; pyzmq's
:class:`zmq.auth.thread.ThreadAuthenticator` answers the ZAP requests with which libzmq asks whether a client
key may connect. The keys folder (default ``<work dir>/keys``, mode 0700) holds:

===========================  ===================================================================================
``server.key``               the server's public certificate: its public key is what clients need
``server.key_secret``        the server's secret certificate, mode 0600; it never leaves this machine
``authorized_clients/``      one public certificate (``NAME.key``) per client key that may connect
``clients/``                 key pairs made by ``python -m backend keys new-client`` for command-line clients
===========================  ===================================================================================

Certificates are the ZPL files of :func:`zmq.auth.create_certificates`, readable by
:func:`zmq.auth.load_certificate`. ``authorized_clients/`` is read again whenever it changes, so authorising or
revoking a key takes effect without a restart: at the next handshake, and for connected clients at their next
message (the server checks every message's key against the current list).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("nerfart.auth")

SERVER_NAME = "server"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Z85_ALPHABET = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class CurveKeyError(ValueError):
    """A key, key file or key folder that cannot be used; the message says what to do."""


def parse_key(text: str | bytes) -> bytes:
    """A CURVE public or secret key in Z85 (40 characters), checked; returned as ASCII bytes.

    Raises:
        CurveKeyError: not a 40-character Z85 string of a 32-byte key.
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    if len(raw) != 40 or not set(raw) <= Z85_ALPHABET:
        raise CurveKeyError(f"{raw[:60].decode('ascii', 'replace')!r} is not a CURVE key: a key is 40 characters of "
                        "Z85 text, as printed by 'python -m backend keys show' or shown in the add-on's preferences")
    if len(z85.decode(raw)) != 32:  # cannot happen for 40 valid characters; kept as the definition of a key
        raise CurveKeyError("a CURVE key decodes to 32 bytes")
    return raw


def read_public_key(key_or_file: str) -> bytes:
    """The public key given as Z85 text or as the path of a certificate file (public or secret)."""
    path = Path(key_or_file).expanduser()
    if path.is_file():
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise CurveKeyError(f"cannot read a public key from {path}: {exc}") from None
        return parse_key(public)
    return parse_key(key_or_file)


def read_key_pair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate file, refusing one that others can read."""
    path = Path(path).expanduser()
    check_private(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"cannot read the key pair in {path}: {exc}") from None
    if secret is None:
        raise CurveKeyError(f"{path} holds only a public key; give the secret certificate (the .key_secret file)")
    return parse_key(public), parse_key(secret)


def check_private(path: Path) -> None:
    """Refuse a secret file that other users may read (as ssh does): someone could have copied it."""
    if os.name != "posix" or not path.exists():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CurveKeyError(f"{path} is readable by other users (mode {mode:o}); a secret key must be private. "
                        f"Run: chmod 600 '{path}' (and create a new key pair if others may have read it)")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        path.chmod(0o700)
    return path


def _new_certificates(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh key pair as ``name.key`` / ``name.key_secret`` in ``directory`` (secret file 0600).

    The pair is written into a private temporary folder first and moved in, so the secret file is never
    readable by others, not even for a moment, and a crash never leaves half a pair.
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix=".new-") as tmp:  # mkdtemp makes it 0700
        public, secret = zmq.auth.create_certificates(tmp, name)
        if os.name == "posix":
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)
        public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
        os.replace(secret, secret_path)
        os.replace(public, public_path)
    return public_path, secret_path


@dataclass(frozen=True)
class ServerKeys:
    """The server's key pair and where its authorised client keys live."""

    public: bytes
    secret: bytes
    keys_dir: Path

    @property
    def authorized_dir(self) -> Path:
        return self.keys_dir / AUTHORIZED_DIR


def load_or_create_server_keys(keys_dir: str | Path) -> tuple[ServerKeys, bool]:
    """The server key pair in ``keys_dir``, created on first use; returns (keys, created).

    Raises:
        CurveKeyError: an unreadable or world-readable secret certificate (the message says how to fix it).
    """
    keys_dir = _private_dir(Path(keys_dir).expanduser().resolve())
    _private_dir(keys_dir / AUTHORIZED_DIR)
    secret_path = keys_dir / f"{SERVER_NAME}.key_secret"
    created = not secret_path.exists()
    if created:
        _new_certificates(keys_dir, SERVER_NAME)
        log.info("created the server key pair in %s", keys_dir)
    public, secret = read_key_pair(secret_path)
    return ServerKeys(public, secret, keys_dir), created


def key_name(public: bytes) -> str:
    """A file-name-safe default name for a client key (Z85 uses characters like '/' and '*')."""
    return "client-" + hashlib.sha256(public).hexdigest()[:12]


def authorized_keys(keys_dir: str | Path) -> dict[str, bytes]:
    """Name -> public key of every authorised client, unreadable files skipped."""
    return keys_in(Path(keys_dir) / AUTHORIZED_DIR)


def keys_in(folder: Path) -> dict[str, bytes]:
    """Name -> public key of every certificate ``NAME.key`` in ``folder`` (unreadable files are skipped with a
    warning)."""
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
            out[path.stem] = parse_key(public)
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
    return out


def authorize(keys_dir: str | Path, public: bytes, name: str | None = None) -> Path:
    """Trust a client's public key: write it as ``authorized_clients/NAME.key``; returns the file.

    Raises:
        CurveKeyError: a bad name, or a different key already authorised under that name.
    """
    public = parse_key(public)
    name = name or key_name(public)
    if not KEY_NAME.match(name):
        raise CurveKeyError(f"key name {name[:80]!r} must be 1-64 letters, digits, '_', '.' or '-'")
    folder = _private_dir(Path(keys_dir).expanduser() / AUTHORIZED_DIR)
    existing = keys_in(folder)
    if existing.get(name, public) != public:
        raise CurveKeyError(f"another key is already authorised as {name!r}; revoke it first or choose another --name")
    # Write the public certificate in the same ZPL format as zmq.auth.create_certificates, via a temporary
    # file and a rename: the authenticator re-reads the folder when it changes and never sees half a file.
    path = folder / f"{name}.key"
    text = ("#   ZeroMQ CURVE Public Certificate of a NeRF-Art client authorised to use this backend\n"
            "#   Delete this file (python -m backend keys revoke NAME) to withdraw its access.\n\n"
            f"metadata\n    name = \"{name}\"\ncurve\n    public-key = \"{public.decode()}\"\n")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".key")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if os.name == "posix":
        os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def revoke(keys_dir: str | Path, name_or_key: str) -> list[Path]:
    """Remove every authorised client key with this name or this public key; returns the removed files."""
    removed = []
    folder = Path(keys_dir) / AUTHORIZED_DIR
    for name, public in keys_in(folder).items():
        if name_or_key in (name, public.decode()):
            path = folder / f"{name}.key"
            path.unlink()
            removed.append(path)
    return removed


def new_client(keys_dir: str | Path, name: str, out_dir: str | Path | None = None) -> tuple[bytes, Path]:
    """A new client key pair (for a command-line client), authorised at once; returns (public, secret file).

    Raises:
        CurveKeyError: a bad name, or a pair of that name already exists.
    """
    if not KEY_NAME.match(name):
        raise CurveKeyError(f"client name {name[:80]!r} must be 1-64 letters, digits, '_', '.' or '-'")
    default_dir = Path(keys_dir).expanduser() / CLIENTS_DIR
    out = _private_dir(Path(out_dir).expanduser() if out_dir else default_dir)
    if (out / f"{name}.key_secret").exists():
        raise CurveKeyError(f"{out / (name + '.key_secret')} exists already; choose another name")
    _, secret_path = _new_certificates(out, name)
    public, _ = read_key_pair(secret_path)
    authorize(keys_dir, public, name)
    return public, secret_path


class AuthorizedKeys:
    """The set of authorised keys, re-read when their folder (``authorized_clients/``) changes.

    The ZAP handler asks :meth:`callback` at every handshake (on the authenticator's thread); the server asks
    :meth:`contains` for every message (on its socket thread), so a revoked key stops working at once.
    """

    def __init__(self, folder: Path, recheck_s: float = 0.5) -> None:
        self.folder = folder
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._signature: tuple | None = None  # None: never read, so the first refresh reads the folder
        self._keys: frozenset[bytes] = frozenset()
        self._checked = 0.0
        self.refresh(force=True)

    def _listing(self) -> tuple:
        try:
            entries = sorted(os.scandir(self.folder), key=lambda e: e.name)
            return tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries
                         if e.name.endswith(".key") and e.is_file())
        except OSError:
            return ()

    def refresh(self, force: bool = False) -> frozenset[bytes]:
        with self._lock:
            now = time.monotonic()
            if force or now - self._checked >= self.recheck_s:
                self._checked = now
                listing = self._listing()
                if listing != self._signature:
                    self._signature = listing
                    self._keys = frozenset(keys_in(self.folder).values())
                    log.info("%d authorised key(s) in %s", len(self._keys), self.folder)
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: may this Z85 client key connect? (always re-read: handshakes
        are rare, and a key authorised a moment ago must work)."""
        allowed = bytes(key) in self.refresh(force=True)
        if not allowed:
            log.warning("refused a client with an unauthorised key %s (authorise it with: python -m backend keys "
                        "authorize -- '%s')", bytes(key).decode(), bytes(key).decode())
        return allowed

    def contains(self, key: bytes) -> bool:
        return bytes(key) in self.refresh()


def start_authenticator(ctx: zmq.Context) -> ThreadAuthenticator:
    """A running ZAP handler in ``ctx`` that admits no CURVE key yet: :func:`admit_clients` says whom.

    Must run before a CURVE socket binds: libzmq asks the handler about every CURVE handshake in this context,
    and without one it would admit any key.
    """
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("nerfart.zap"))
    auth.start()
    return auth


def admit_clients(auth: ThreadAuthenticator, keys: ServerKeys) -> AuthorizedKeys:
    """Let the keys in ``keys.authorized_dir`` connect to sockets without a ZAP domain (the client endpoint)."""
    trusted = AuthorizedKeys(_private_dir(keys.authorized_dir))
    auth.configure_curve_callback("*", credentials_provider=trusted)
    return trusted


def curve_server_options(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make ``sock`` a CURVE server with ``keys`` (before bind)."""
    sock.curve_server = True
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
