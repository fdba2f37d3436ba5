"""`client_config.quick_load` reads `~/.dstack/config.yml` without PyYAML: for any text it must
return what `yaml.safe_load` returns, or None (then PyYAML reads it)."""

from __future__ import annotations

import base64
import random
import secrets

import pytest
import yaml

from dstack import client_config as cc

# Values YAML 1.1 reads as something else than the string, or that need quoting.
TRICKY = [
    "true", "False", "NO", "on", "Off", "null", "NULL", "~", "123", "-1", "+5", "0x1f", "0o17",
    "0b101", "017", "1_000", "1:30", "1e3", "1.5", ".inf", ".NaN", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "<<", "=", "", " x", "x ", "a: b", "a #b", "#x", "-x", "- x",
    "@x", "%x", "x:", "ü", "a'b", '"q"', "[1]", "{a: 1}", "*x", "&x", "!x", "|", ">", "12:30:00",
    "1:2:3", "5e", "0xZZ", "+.inf", "_x", "x_", "9abc-def", "1-2-3", "09", "0.", "1__1",
]  # fmt: skip


def _dumped(projects: list[dict]) -> str:
    return yaml.safe_dump({"projects": projects}, sort_keys=True, default_flow_style=False)


def _random_value(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(TRICKY)
    if roll < 0.7:  # as secrets.token_urlsafe, the server's tokens
        return base64.urlsafe_b64encode(rng.randbytes(rng.randint(1, 32))).rstrip(b"=").decode()
    if roll < 0.85:
        host = rng.choice(["127.0.0.1", "localhost", "10.0.0.7"])
        return f"http://{host}:{rng.randint(1, 65535)}"
    return "".join(rng.choice("0123456789-_.:eExbT") for _ in range(rng.randint(1, 8)))


def test_every_answer_is_yamls() -> None:
    rng = random.Random(16)
    taken = 0
    for _ in range(3000):
        projects = [
            {"default": rng.random() < 0.5, "name": _random_value(rng),
             "token": _random_value(rng), "url": _random_value(rng)}
            for _ in range(rng.randint(1, 3))
        ]  # fmt: skip
        text = _dumped(projects)
        quick = cc.quick_load(text)
        if quick is not None:
            taken += 1
            assert quick == yaml.safe_load(text), text
    assert taken > 100  # the usual files do take the quick path


@pytest.mark.parametrize("value", TRICKY)
def test_a_hand_written_plain_value_is_never_misread(value: str) -> None:
    """Also files nobody dumped: the value written without the quotes safe_dump would add."""
    text = f"projects:\n- default: true\n  name: main\n  token: {value}\n  url: http://a\n"
    quick = cc.quick_load(text)
    if quick is not None:
        assert quick == yaml.safe_load(text)


def test_a_server_written_file_takes_the_quick_path(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOME", str(tmp_path))
    cc.add_project("main", "http://127.0.0.1:3000", "4" + secrets.token_urlsafe(32))
    cc.add_project("other", "https://sky.example.com", secrets.token_urlsafe(32), default=False)
    text = cc.config_path().read_text()
    assert cc.quick_load(text) == yaml.safe_load(text)
    assert [p.name for p in cc.load_projects()] == ["main", "other"]


@pytest.mark.parametrize(
    "text",
    [
        "projects:\n- default: true\n  name: main\n  token: t\n  url: http://a\nrepos: []\n",
        "projects: []\n",
        "# comment\nprojects:\n- name: main\n",
        "projects:\r\n- name: main\r\n",
        "projects:\n- name: main\n  name: other\n",
        "projects:\n  - name: main\n",
        "projects:\n- name: main\n  extra: x\n",
        "projects:\n- default: yes\n  name: main\n",
    ],
)
def test_other_layouts_are_left_to_yaml(text: str) -> None:
    assert cc.quick_load(text) is None
