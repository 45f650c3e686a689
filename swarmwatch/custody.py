"""Key custody: the deployment secret, held outside the database, wraps every study key.

A copy of the database holds study keys only in wrapped form, so it can neither
reverse nor link peer keys; the secret alone holds no study key at all (DESIGN.md).

The store's own secrets (store_secret, such as the key of the replay digests) are
wrapped the same way under their name, with a tag of their own.

The wrap, with nothing but the standard library's BLAKE2b (a keyed PRF and MAC):
    kek      = scrypt(secret)                         once per process
    stream   = BLAKE2b(key=kek, nonce)                a fresh 128-bit nonce per key
    wrapped  = study_key XOR stream
    tag      = BLAKE2b(key=kek, study_id | nonce | wrapped)
An encrypt-then-MAC with a PRF keystream: the wrapped key is indistinguishable from
random without the kek, the tag refuses a wrong secret or a key moved to another
study, and no cipher library is needed. scrypt makes a guessable secret (a short
passphrase someone typed instead of `swarmwatch secret create`) costly to search.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from swarmwatch.config import Settings

#: Bytes of randomness `swarmwatch secret create` writes (256 bits, urlsafe base64 text).
SECRET_BYTES = 32
#: A secret shorter than this is refused: it would be guessable from a database copy.
MIN_SECRET_CHARS = 32
#: Nonce per wrapped key: fresh randomness each time a key is (re)wrapped.
NONCE_BYTES = 16
TAG_BYTES = 32
#: scrypt cost (2^14, r=8: ~16 MiB and tens of ms, once per process). The salt is fixed:
#: the secret itself is random, scrypt only slows a search over guessable ones.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
_SCRYPT_SALT = b"swarmwatch deployment secret v1"
_STREAM = b"sw-wrap-stream"
_TAG = b"sw-wrap-tag"
_STORE_TAG = b"sw-store-tag"  # apart from study keys: no tag serves both
_ID = b"sw-secret-id"


class CustodyError(Exception):
    """The deployment secret is missing, unreadable, too weak, or not this database's."""


class MissingSecret(CustodyError):
    """No deployment secret is configured."""


class WrongSecret(CustodyError):
    """The configured secret is not the one this database's study keys are wrapped with."""


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A study key as stored: useless without the deployment secret."""

    nonce: bytes
    wrapped: bytes
    tag: bytes
    secret_id: str


@dataclass(frozen=True, slots=True)
class KeyCustody:
    """The key-encryption key derived from the deployment secret, and its public id.

    secret_id names the secret (in errors and in the database) without revealing it:
    a PRF output under a 256-bit key.
    """

    kek: bytes = field(repr=False)
    secret_id: str

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyCustody:
        if len(secret) < MIN_SECRET_CHARS:
            raise CustodyError(
                f"the deployment secret has {len(secret)} characters; at least "
                f"{MIN_SECRET_CHARS} are needed (make one with `swarmwatch secret create`)"
            )
        kek = hashlib.scrypt(secret, salt=_SCRYPT_SALT, **_SCRYPT)
        ident = hashlib.blake2b(b"", key=kek, digest_size=8, person=_ID).hexdigest()
        return cls(kek=kek, secret_id=ident)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyCustody:
        """The custody of SWARMWATCH_SECRET_FILE or SWARMWATCH_SECRET; CustodyError if none."""
        return cls.from_secret(read_secret(settings))

    @classmethod
    def ephemeral(cls) -> KeyCustody:
        """A secret that lives only in this process: for benchmarks on throw-away databases."""
        return cls.from_secret(secrets.token_urlsafe(SECRET_BYTES).encode())

    def wrap(self, study_id: int, key: bytes) -> WrappedKey:
        return self._wrap(_study_context(study_id), _TAG, key)

    def unwrap(self, study_id: int, stored: WrappedKey) -> bytes:
        """The study key; WrongSecret if the tag does not verify under this secret."""
        return self._unwrap(_study_context(study_id), _TAG, stored, f"study {study_id}'s key")

    def wrap_store_secret(self, name: str, key: bytes) -> WrappedKey:
        """A secret of the store itself (store_secret: `replay` keys the replay digests),
        wrapped like a study key; its tag binds its name, so it cannot pass for another."""
        return self._wrap(name.encode(), _STORE_TAG, key)

    def unwrap_store_secret(self, name: str, stored: WrappedKey) -> bytes:
        """The store's secret `name`; WrongSecret if its tag does not verify."""
        return self._unwrap(name.encode(), _STORE_TAG, stored, f"the store's {name} key")

    def _wrap(self, context: bytes, person: bytes, key: bytes) -> WrappedKey:
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = bytes(a ^ b for a, b in zip(key, self._stream(nonce, len(key)), strict=True))
        tag = self._tag(person, context, nonce, wrapped)
        return WrappedKey(nonce, wrapped, tag, self.secret_id)

    def _unwrap(self, context: bytes, person: bytes, stored: WrappedKey, what: str) -> bytes:
        expected = self._tag(person, context, stored.nonce, stored.wrapped)
        if not secrets.compare_digest(expected, stored.tag):
            raise WrongSecret(
                f"{what} is wrapped with deployment secret {stored.secret_id}, "
                f"not with the configured one ({self.secret_id})"
                if stored.secret_id != self.secret_id
                else f"{what} fails its integrity check"
            )
        stream = self._stream(stored.nonce, len(stored.wrapped))
        return bytes(a ^ b for a, b in zip(stored.wrapped, stream, strict=True))

    def _stream(self, nonce: bytes, size: int) -> bytes:
        return hashlib.blake2b(nonce, key=self.kek, digest_size=size, person=_STREAM).digest()

    def _tag(self, person: bytes, context: bytes, nonce: bytes, wrapped: bytes) -> bytes:
        message = context + nonce + wrapped
        return hashlib.blake2b(message, key=self.kek, digest_size=TAG_BYTES, person=person).digest()


def _study_context(study_id: int) -> bytes:
    return study_id.to_bytes(8, "big")


def read_secret(settings: Settings) -> bytes:
    """The deployment secret's bytes from the file or the variable; never logged or echoed."""
    if settings.secret_file and settings.secret is not None:
        raise CustodyError("set SWARMWATCH_SECRET_FILE or SWARMWATCH_SECRET, not both")
    if settings.secret is not None:
        return settings.secret.get_secret_value().strip().encode()
    if not settings.secret_file:
        raise MissingSecret(
            "no deployment secret: set SWARMWATCH_SECRET_FILE to a file made by "
            "`swarmwatch secret create FILE` (or SWARMWATCH_SECRET); study keys are "
            "wrapped with it and never stored in usable form"
        )
    path = Path(settings.secret_file)
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise CustodyError(
                f"secret file {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                f"run `chmod 600 {path}`"
            )
        return path.read_bytes().strip()
    except OSError as exc:
        raise CustodyError(f"cannot read secret file {path}: {exc.strerror}") from None


def write_secret_file(path: Path) -> None:
    """A new random secret in a new file, created 0600 (never over an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(SECRET_BYTES) + "\n")


__all__ = [
    "CustodyError",
    "KeyCustody",
    "MissingSecret",
    "WrappedKey",
    "WrongSecret",
    "read_secret",
    "write_secret_file",
]
