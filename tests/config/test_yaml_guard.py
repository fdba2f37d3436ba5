"""YAML that PyYAML would accept but a configuration must not: a key given twice (PyYAML keeps
the last one silently) and an alias bomb (refused before anything expands it)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from dstack.errors import ConfigurationError
from dstack.models import yaml_lines
from dstack.models.loading import load_configuration, load_configuration_text


def _error(text: str, tmp_path: Path) -> ConfigurationError:
    path = tmp_path / "x.dstack.yml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_configuration(path)
    return info.value


def test_duplicate_top_level_key_names_both_lines(tmp_path):
    error = _error("type: task\nimage: a\ncommands: [echo]\nimage: b\n", tmp_path)
    assert error.line == 4
    assert "duplicate key 'image' (lines 2 and 4)" in str(error)


def test_duplicate_nested_key_is_refused(tmp_path):
    error = _error("type: task\ncommands: [echo]\nresources:\n  cpu: 2\n  cpu: 4\n", tmp_path)
    assert "duplicate key 'cpu' (lines 4 and 5)" in error.message


def test_merge_key_override_is_not_a_duplicate():
    data = yaml_lines.load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert data["other"] == {"x": 3, "y": 2}


def _bomb(depth: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghijk"[: depth - 1]:
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "type: task\ncommands: [echo]\nenv:\n" + "".join(f"  {x}\n" for x in lines)


def test_alias_bomb_refused_fast_and_small(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    error = _error(_bomb(), tmp_path)
    assert time.monotonic() - started < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert "alias bomb" in error.message


def test_alias_bomb_from_stdin_refused():
    with pytest.raises(ConfigurationError, match="alias bomb"):
        load_configuration_text(_bomb(), "<stdin>")


def test_line_map_does_not_walk_a_bomb():
    assert yaml_lines.line_map(_bomb()) == {}


def test_recursive_alias_refused(tmp_path):
    error = _error("type: task\ncommands: &a [echo, *a]\n", tmp_path)
    assert "recursive alias" in error.message


def test_moderate_aliases_still_work(tmp_path):
    text = "type: task\nenv: &e {A: '1'}\ncommands: [echo]\n"
    path = tmp_path / "ok.dstack.yml"
    path.write_text(text)
    assert load_configuration(path).env is not None
    assert yaml_lines.load_yaml("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2]] * 2}
