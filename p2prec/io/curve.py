"""ZeroMQ CURVE keys: per-node key pairs, the allow-list, and the ZAP handler that enforces it.

Convention: in ``keys.curve_dir`` every node ``<id>`` has a public certificate ``<id>.key`` and
(on its own host) a secret certificate ``<id>.key_secret``, both in pyzmq's (czmq) certificate
format. The ``*.key`` files of the directory are the allow-list, and their file names map a
public key to a node id, so the CURVE key a peer authenticated with names the node it is.

Keys are z85-encoded ``bytes`` (40 characters), as pyzmq's CURVE socket options take them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from p2prec.log import get_logger

log = get_logger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_CHARS = 40
#: Refused keys remembered so that each is logged once (``on_denied`` sees every refusal).
DENIED_LOG_MAX = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_Z85_ALPHABET = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)

StrPath = str | os.PathLike[str]


def public_key_file(curve_dir: StrPath, name: str) -> Path:
    """Path of node ``name``'s public certificate in ``curve_dir``."""
    return Path(curve_dir) / f"{_check_name(name)}{PUBLIC_SUFFIX}"


def secret_key_file(curve_dir: StrPath, name: str) -> Path:
    """Path of node ``name``'s secret certificate in ``curve_dir``."""
    return Path(curve_dir) / f"{_check_name(name)}{SECRET_SUFFIX}"


def generate_node_keys(curve_dir: StrPath, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write a fresh CURVE key pair for node ``name``: ``(public_path, secret_path)``.

    Refuses (``FileExistsError``) to overwrite either file unless ``force``. The files are made
    in a private temporary directory and moved into place, so the secret is never readable by
    others (mode 0600), not even for an instant."""
    public, secret = public_key_file(curve_dir, name), secret_key_file(curve_dir, name)
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: already exists (use force to overwrite)")
    public.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".curve-", dir=public.parent)
    try:
        made_public, made_secret = zmq.auth.create_certificates(tmp, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return public, secret


def load_keypair(secret_path: StrPath) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a secret certificate; ``ValueError`` naming the path
    when the file is not one (``FileNotFoundError`` when it is missing)."""
    public, secret = _load_certificate(Path(secret_path))
    if secret is None:
        raise ValueError(f"{secret_path}: no secret-key in this certificate (a public one?)")
    return public, secret


def load_public_key(path: StrPath) -> bytes:
    """The z85 public key of a certificate file (``ValueError`` naming the path if bad)."""
    return _load_certificate(Path(path))[0]


def load_keyring(curve_dir: StrPath) -> dict[str, bytes]:
    """Node id -> public key, for every ``*.key`` certificate in ``curve_dir`` (sorted by id).

    ``ValueError`` naming the file for a bad certificate or name; ``FileNotFoundError`` when the
    directory does not exist."""
    directory = Path(curve_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such CURVE key directory")
    ring: dict[str, bytes] = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        name = path.name[: -len(PUBLIC_SUFFIX)]
        if not _NAME_RE.match(name):
            raise ValueError(f"{path}: file name is not a valid node id")
        ring[name] = load_public_key(path)
    return ring


def load_allowed(curve_dir: StrPath) -> list[bytes]:
    """The allow-list: public keys of all ``*.key`` certificates in ``curve_dir``."""
    return list(load_keyring(curve_dir).values())


class AllowList:
    """Node id <-> public key of the nodes allowed to connect (immutable; reload = new one)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        for name, key in keys.items():
            _check_key(key, f"allow-list entry {name!r}")
        self._by_name = dict(keys)
        # Two ids with one key: the first (in sorted order) names it.
        self._by_key: dict[bytes, str] = {}
        for name in sorted(keys):
            self._by_key.setdefault(keys[name], name)

    @classmethod
    def load(cls, curve_dir: StrPath) -> AllowList:
        """The ``*.key`` certificates of ``curve_dir`` (see ``load_keyring``)."""
        return cls(load_keyring(curve_dir))

    def key_of(self, name: str) -> bytes | None:
        """Public key of node ``name``, if allowed."""
        return self._by_name.get(name)

    def name_of(self, key: bytes) -> str | None:
        """Node id whose certificate holds z85 ``key``, if allowed."""
        return self._by_key.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)


class CurveAuthenticator(AsyncioAuthenticator):
    """ZAP handler on the asyncio loop: admits a CURVE client only when its public key is in the
    allow-list, and gives its messages the node id of that key as ``User-Id``.

    Uses pyzmq's public credentials-provider hook (``configure_curve_callback``) rather than
    ``configure_curve(location=...)``: same directory, but a bad certificate is an error at
    start instead of a log line that silently refuses everyone, the list can be swapped
    atomically (``allow_list``), and refusals are reported to ``on_denied`` (counted, logged)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        allow: AllowList,
        on_denied: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(context)
        self.allow_list = allow
        self._on_denied = on_denied
        self._logged: set[bytes] = set()
        self.configure_curve_callback(domain="*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Credentials provider: ``key`` is the client's z85 public key."""
        if key in self.allow_list:
            return True
        if key not in self._logged and len(self._logged) < DENIED_LOG_MAX:
            self._logged.add(key)
            log.warning("peer_refused", key=key.decode("ascii", "replace"))
        if self._on_denied is not None:
            self._on_denied(key)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """``User-Id`` of an admitted client: its node id (z85 key if unnamed)."""
        key = z85.encode(client_public_key)
        name = self.allow_list.name_of(key)
        return name if name is not None else key.decode("ascii")


def authenticated_node(frame: zmq.Frame) -> str | None:
    """The ``User-Id`` ZAP gave the connection ``frame`` came on (a node id, see
    ``CurveAuthenticator.curve_user_id``); None when there is none."""
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) and value else None


# --- refused handshakes ----------------------------------------------------------------------

#: Handshake failures after which libzmq (4.3) gives a connecting socket's session up for good:
#: no reconnect, and every later send finds no room (EAGAIN), as on a full queue.
FATAL_HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


def watch_handshakes(sock: zmq.Socket[Any], endpoint: str) -> zmq.Socket[bytes]:
    """A PAIR socket (same context) receiving ``sock``'s fatal handshake failures, published on
    inproc ``endpoint``; close it after ``sock``."""
    sock.monitor(endpoint, FATAL_HANDSHAKE_EVENTS)
    pair: zmq.Socket[bytes] = zmq.Socket(sock.context, zmq.PAIR)
    pair.linger = 0
    pair.connect(endpoint)
    return pair


def handshake_refused(monitor: zmq.Socket[bytes]) -> bool:
    """Whether ``monitor`` (from ``watch_handshakes``) reported a fatal failure; drains it."""
    refused = False
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return refused
        refused = refused or bool(event["event"] & FATAL_HANDSHAKE_EVENTS)


# --- helpers ---------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"node id {name!r}: expected 1-64 of [A-Za-z0-9._-], starting alnum")
    return name


def _check_key(key: bytes, where: str) -> bytes:
    if len(key) != Z85_KEY_CHARS or not set(key) <= _Z85_ALPHABET:
        raise ValueError(f"{where}: not a {Z85_KEY_CHARS}-character z85 CURVE key")
    return key


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CURVE certificate")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a CURVE certificate ({exc})") from None
    _check_key(public, f"{path}: public-key")
    if secret is not None:
        _check_key(secret, f"{path}: secret-key")
    return public, secret
