"""Secrets at rest: user tokens are stored as SHA-256 hashes (shown once, never stored); what
the server must read again (agent tokens, backend credentials, SSH keys, secrets) goes through
one `Box`.

Every value the box writes says which key wrote it, in the original's format
`enc:<type>:<key name>:<ciphertext>`, so keys can be rotated: the first key of `config.yml`'s
`encryption.keys` encrypts, every key decrypts. With no keys configured the server's own key
file (`data/encryption.key`, a Fernet key, mode 0600) encrypts, as before keys were
configurable; values written before the prefix existed (a bare Fernet token) are read with that
file, so an upgrade needs no migration of stored data.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc"
# The key file's name in prefixes; not a configurable type, so no user key can shadow it.
FILE_KEY_TYPE = "fernet"
FILE_KEY_NAME = "server"
IDENTITY_NAME = "noname"
_NONCE = 12


class DecryptionError(Exception):
    """A stored value no configured key can read: which key it names and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Key:
    """One configured key. `secret` is the raw key (AES: 32 bytes); identity has none."""

    type: str
    name: str
    secret: bytes = b""

    def encrypt(self, plain: str) -> str:
        if self.type == "identity":
            return plain
        if self.type == "aes":
            nonce = os.urandom(_NONCE)
            sealed = AESGCM(self.secret).encrypt(nonce, plain.encode(), None)
            return base64.b64encode(nonce + sealed).decode()
        return Fernet(self.secret).encrypt(plain.encode()).decode()

    def decrypt(self, cipher: str) -> str:
        if self.type == "identity":
            return cipher
        if self.type == "aes":
            raw = base64.b64decode(cipher)
            return AESGCM(self.secret).decrypt(raw[:_NONCE], raw[_NONCE:], None).decode()
        return Fernet(self.secret).decrypt(cipher.encode()).decode()


def keys_from_config(configured: Sequence[object]) -> list[Key]:
    """`config.yml`'s `encryption.keys` (already validated: AES secrets are 32 bytes)."""
    out = []
    for k in configured:
        if getattr(k, "type", None) == "aes":
            out.append(Key("aes", k.name, base64.b64decode(k.secret)))  # type: ignore[attr-defined,arg-type]
        else:
            out.append(Key("identity", IDENTITY_NAME))
    return out


def _file_key(key_file: Path) -> Key:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        # Written whole under a private name, then linked into place: server replicas starting
        # together on one server directory never read a half-written key, and the first link
        # wins (the others use its key).
        tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
        try:
            os.link(tmp, key_file)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    os.chmod(key_file, 0o600)
    return Key(FILE_KEY_TYPE, FILE_KEY_NAME, key_file.read_bytes().strip())


class Box:
    """Encrypts with the first key, decrypts with the key a value names."""

    def __init__(self, key_file: Path, keys: Sequence[Key] = ()) -> None:
        self._file = _file_key(key_file)
        self.configure(keys)

    def configure(self, keys: Sequence[Key]) -> None:
        """The keys from `config.yml` (read at start, after the box was made)."""
        self._writer = keys[0] if keys else self._file
        self._keys = {(k.type, k.name): k for k in (*keys, self._file)}

    def encrypt(self, value: str) -> str:
        k = self._writer
        return f"{PREFIX}:{k.type}:{k.name}:{k.encrypt(value)}"

    def key_of(self, value: str) -> tuple[str, str]:
        """(type, name) of the key a stored value was written with."""
        if not value.startswith(PREFIX + ":"):
            return FILE_KEY_TYPE, FILE_KEY_NAME  # written before values carried their key
        _, ktype, name, _ = value.split(":", 3)
        return ktype, name

    def decrypt(self, value: str) -> str:
        ktype, name = self.key_of(value)
        cipher = value.split(":", 3)[3] if value.startswith(PREFIX + ":") else value
        key = self._keys.get((ktype, name))
        if key is None:
            raise DecryptionError(
                f"a stored value is encrypted with key {name!r} (type {ktype}), which is not "
                "in config.yml's encryption.keys; add it back (keys: the new key first, the "
                "old ones after it)"
            )
        try:
            return key.decrypt(cipher)
        except (InvalidTag, InvalidToken, ValueError) as e:
            raise DecryptionError(
                f"key {name!r} (type {ktype}) cannot decrypt a value stored with a key of that "
                "name: its secret differs from the one the value was written with"
            ) from e
