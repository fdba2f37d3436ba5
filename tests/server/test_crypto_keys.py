"""The box and `encryption.keys`: values carry the key that wrote them, the first key writes,
every key reads (rotation), values of the key file from before keys were configurable stay
readable, and a missing or changed key is an error naming it. Pure: no server."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from dstack.errors import ConfigurationError
from dstack.models.envs import interpolate_secrets
from dstack.server.server_config import load_server_config
from dstack.server.services.crypto import Box, DecryptionError, Key
from dstack.server.services.pubkeys import check_ssh_key_pub


def aes(name: str) -> Key:
    return Key("aes", name, os.urandom(32))


def test_the_first_key_writes_in_the_originals_format(tmp_path: Path) -> None:
    box = Box(tmp_path / "key", [aes("k1")])
    stored = box.encrypt("hunter2-sentinel")
    assert stored.startswith("enc:aes:k1:")
    assert "hunter2-sentinel" not in stored
    assert box.decrypt(stored) == "hunter2-sentinel"
    assert box.encrypt("x") != box.encrypt("x")  # a fresh nonce each time


def test_rotation_new_key_first_old_values_still_read(tmp_path: Path) -> None:
    old, new = aes("old"), aes("new")
    before = Box(tmp_path / "key", [old]).encrypt("v-old")
    rotated = Box(tmp_path / "key", [new, old])
    assert rotated.decrypt(before) == "v-old"
    assert rotated.encrypt("v-new").startswith("enc:aes:new:")


def test_values_written_before_keys_were_configurable_stay_readable(tmp_path: Path) -> None:
    key_file = tmp_path / "encryption.key"
    raw = Fernet.generate_key()
    key_file.write_bytes(raw)
    bare = Fernet(raw).encrypt(b"old-agent-token").decode()  # what the old Box stored
    box = Box(key_file, [aes("k1")])
    assert box.decrypt(bare) == "old-agent-token"
    assert Box(key_file).encrypt("x").startswith("enc:fernet:server:")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    stored = Box(tmp_path / "key", [aes("gone")]).encrypt("v")
    with pytest.raises(DecryptionError, match="key 'gone'.*not in config.yml"):
        Box(tmp_path / "key", [aes("other")]).decrypt(stored)


def test_a_key_whose_secret_changed_is_named(tmp_path: Path) -> None:
    stored = Box(tmp_path / "key", [aes("k")]).encrypt("v")
    with pytest.raises(DecryptionError, match="key 'k'.*cannot decrypt"):
        Box(tmp_path / "key", [aes("k")]).decrypt(stored)


def test_identity_stores_in_clear_and_is_marked(tmp_path: Path) -> None:
    box = Box(tmp_path / "key", [Key("identity", "noname")])
    assert box.encrypt("plain") == "enc:identity:noname:plain"
    assert box.decrypt("enc:identity:noname:plain") == "plain"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_config_keys_in_the_originals_format(tmp_path: Path) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    path = _write(
        tmp_path,
        f"encryption:\n  keys:\n  - type: aes\n    name: k1\n    secret: {secret}\n"
        "  - type: identity\n",
    )
    keys = load_server_config(path).encryption_keys()
    assert [k.type for k in keys] == ["aes", "identity"]


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("bm90LTMyLWJ5dGVz", "32 bytes in base64, got 12 bytes"),
        ("not base64 !!", "must be base64"),
    ],
)
def test_a_malformed_key_stops_with_file_and_line(tmp_path: Path, secret: str, why: str) -> None:
    path = _write(
        tmp_path,
        f"projects: []\nencryption:\n  keys:\n  - type: aes\n    name: k1\n    secret: {secret}\n",
    )
    with pytest.raises(ConfigurationError) as e:
        load_server_config(path)
    text = str(e.value)
    assert "config.yml:6:" in text and why in text
    assert secret not in text  # the key itself is never echoed


def test_an_unknown_key_type_or_duplicate_name_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "encryption:\n  keys:\n  - type: rot13\n")
    with pytest.raises(ConfigurationError, match="unknown key type 'rot13'"):
        load_server_config(path)
    s = base64.b64encode(os.urandom(32)).decode()
    dup = f"  - type: aes\n    name: k\n    secret: {s}\n"
    path = _write(tmp_path, "encryption:\n  keys:\n" + dup + dup)
    with pytest.raises(ConfigurationError, match="duplicate encryption key name k"):
        load_server_config(path)


def test_interpolation_of_secrets() -> None:
    values = {"tok": "s3cr$t", "b": "B"}
    assert interpolate_secrets("Bearer ${{ secrets.tok }}", values) == "Bearer s3cr$t"
    assert interpolate_secrets("${{secrets.b}}-$${{ secrets.b }}", values) == "B-${{ secrets.b }}"
    assert interpolate_secrets("a$$b", values) == "a$$b"  # no reference: left as written


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"


def test_a_good_ssh_key_passes() -> None:
    check_ssh_key_pub(ED25519)
    check_ssh_key_pub(None)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("not-a-key", "expected a key type and the key"),
        ('command="sh" ' + ED25519, "unknown key type"),
        (ED25519 + "\nssh-ed25519 AAAA other", "more than one line"),
        ("ssh-ed25519 !!!notbase64", "not base64"),
        ("ssh-rsa " + ED25519.split()[1], "not a ssh-rsa key"),
    ],
)
def test_a_bad_ssh_key_is_refused_at_apply(key: str, why: str) -> None:
    from dstack.errors import ServerClientError

    with pytest.raises(ServerClientError, match=why) as e:
        check_ssh_key_pub(key)
    assert e.value.field == "plan.run_spec.ssh_key_pub"
