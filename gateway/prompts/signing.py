"""Ed25519 signatures on prompt versions, so a row edited behind the gateway's back is never served.

Each version is signed at push over ``(name, version, sha256 of the canonical content)``; the
gateway recomputes the hash from the stored content and checks the signature before it serves
a version. Editing the content breaks the hash, editing the hash breaks the signature, and
moving content to another name or version number breaks it too. The private key never goes
into the database: it comes from ``prompts.signing_key`` (``GATEWAY_PROMPT_SIGNING_KEY``) or,
for the zero-set-up quick start, from a key file generated on first use with mode 0600
(``prompts.signing_key_file``; by default ``prompt-signing.key`` beside the SQLite file).
Several machines must share ``signing_key``; old public keys can stay trusted through
``prompts.trusted_public_keys`` while keys rotate.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from gateway.prompts.store import VersionRecord

_DOMAIN = b"gateway-prompt-version/1\n"


class SigningKeyError(Exception):
    """The configured signing key cannot be used (bad encoding, unreadable file)."""


def content_sha256(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def signed_message(name: str, version: int, sha256: str) -> bytes:
    return _DOMAIN + f"{name}\n{version}\n{sha256}".encode()


def _b64decode(value: str) -> bytes:
    value = value.strip()
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise SigningKeyError("not base64") from None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _public_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id_of(public: Ed25519PublicKey) -> str:
    """A short public handle for a key: which key signed a version, without revealing anything."""
    return hashlib.sha256(_public_raw(public)).hexdigest()[:16]


def generate_key() -> str:
    """A new private key in the configured format (base64 of the 32-byte seed)."""
    return _b64(os.urandom(32))


class Signer:
    """Signs with one private key; verifies with it and any extra trusted public keys.

    The keys are checked (encoding, length) at once, so a bad key still stops start-up, but
    the Ed25519 objects are built on first use: importing ``cryptography`` costs ~70 ms of
    start-up, wasted on a gateway that serves no prompt.
    """

    def __init__(self, private_key: str, trusted_public_keys: list[str] | tuple[str, ...] = ()) -> None:
        seed = _b64decode(private_key)
        if len(seed) != 32:
            raise SigningKeyError(f"an Ed25519 private key is 32 bytes; this one is {len(seed)}")
        trusted: list[bytes] = []
        for encoded in trusted_public_keys:
            raw = _b64decode(encoded)
            if len(raw) != 32:
                raise SigningKeyError(f"trusted public key {encoded[:12]}...: an Ed25519 public key is 32 bytes")
            trusted.append(raw)
        self._seed = seed
        self._trusted_raw = tuple(trusted)
        self._private: Ed25519PrivateKey | None = None
        self._trusted: dict[str, Ed25519PublicKey] = {}

    def _load(self) -> Ed25519PrivateKey:
        if self._private is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

            private = Ed25519PrivateKey.from_private_bytes(self._seed)
            public = private.public_key()
            trusted = {key_id_of(public): public}
            for raw in self._trusted_raw:
                other = Ed25519PublicKey.from_public_bytes(raw)
                trusted[key_id_of(other)] = other
            self._trusted = trusted
            self._private = private
        return self._private

    @property
    def key_id(self) -> str:
        return key_id_of(self._load().public_key())

    @property
    def public_key(self) -> str:
        return _b64(_public_raw(self._load().public_key()))

    def sign(self, name: str, version: int, sha256: str) -> str:
        return _b64(self._load().sign(signed_message(name, version, sha256)))

    def verify(self, name: str, version: int, sha256: str, signature: str, key_id: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        self._load()
        public = self._trusted.get(key_id)
        if public is None:
            return False
        try:
            public.verify(_b64decode(signature), signed_message(name, version, sha256))
        except (InvalidSignature, SigningKeyError):
            return False
        return True


def _read_or_create_key_file(path: Path) -> str:
    """The key in ``path``, generating it first if absent; safe when several workers race.

    The new key is written to a private temporary file and hard-linked into place: ``link``
    fails if another process got there first, and nobody ever reads a half-written key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".prompt-key-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key() + "\n")
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):  # another worker created it first: use theirs
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the prompt signing key {path}: {exc.strerror or exc}") from None


def _default_key_file(settings: Settings) -> Path:
    """Beside the SQLite database, so a container keeps its key on the volume that keeps its data."""
    url = settings.database_url  # a relative SQLite path is already resolved against the config file
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / "prompt-signing.key"
    return Path(".gateway/prompt-signing.key")


def load_signer(settings: Settings) -> Signer:
    """The signer for this deployment: the configured key, else the (generated) key file."""
    config = settings.prompts
    configured = config.signing_key.get_secret_value()
    origin = "prompts.signing_key"
    if not configured:
        path = settings.resolve_path(config.signing_key_file or _default_key_file(settings))
        configured = _read_or_create_key_file(path)
        origin = str(path)
    try:
        return Signer(configured, config.trusted_public_keys)
    except SigningKeyError as exc:
        raise SigningKeyError(f"{origin}: {exc}") from None


def integrity_problem(record: VersionRecord, signer: Signer) -> str | None:
    """Why a stored version must not be served, or None when it is exactly what was pushed."""
    if content_sha256(record.content) != record.sha256:
        return "its stored content does not match its sha256"
    if not signer.verify(record.name, record.version, record.sha256, record.signature, record.key_id):
        return f"its signature (key {record.key_id}) does not verify against the trusted keys"
    return None
