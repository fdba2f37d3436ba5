"""The SSH public key a run is submitted with: checked at apply, because the agent writes it
into `authorized_keys` on the host and in the job. A bad key used to fail late, at job start;
a key with a newline or an options prefix would add lines of its own to `authorized_keys`."""

from __future__ import annotations

import base64
import binascii
import re
import struct

from dstack.errors import ServerClientError

_TYPE_RE = re.compile(r"^(ssh|ecdsa-sha2|sk-ssh|sk-ecdsa-sha2)-[a-z0-9@.-]+$")
_FIELD = "plan.run_spec.ssh_key_pub"


def _refuse(why: str) -> ServerClientError:
    return ServerClientError(
        f"invalid ssh_key_pub: {why}; give one OpenSSH public key line "
        "(`<type> <base64> [comment]`, as in ~/.ssh/id_ed25519.pub)",
        field=_FIELD,
    )


def _blob_type(blob: bytes) -> str | None:
    """The key type the base64 blob starts with (a length-prefixed string)."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    return blob[4 : 4 + length].decode("ascii", "replace")


def check_ssh_key_pub(key: str | None) -> None:
    if key is None or not key.strip():
        return
    if "\n" in key.strip() or "\r" in key:
        raise _refuse("it has more than one line")
    parts = key.strip().split(None, 2)
    if len(parts) < 2:
        raise _refuse("expected a key type and the key")
    ktype, data = parts[0], parts[1]
    if not _TYPE_RE.match(ktype):
        raise _refuse(f"unknown key type {ktype[:40]!r}")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("the key is not base64") from None
    if _blob_type(blob) != ktype:
        raise _refuse(f"the key data is not a {ktype} key")
