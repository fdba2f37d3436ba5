"""`dstack apply` flags merged into configurations (pure functions)."""

from __future__ import annotations

import argparse

import pytest

from dstack.cli.apply_overrides import (
    add_run_flags,
    apply_overrides,
    apply_profile,
    check_exclusive,
    parse_env_flags,
    resolve_env,
    substitute_run_args,
)
from dstack.cli.common import CLIError, check_run_name


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    return parser.parse_args(list(argv))


TASK = {"type": "task", "name": "t", "commands": ["python train.py ${{ run.args }}"],
        "env": {"A": "1", "B": None}, "resources": {"gpu": "A100"}, "ports": ["8080"]}


def test_flags_win_over_file():
    args = parse("-n", "other", "--gpu", "H100:2", "--memory", "64GB..", "--max-price", "2.5",
                 "--spot", "-b", "aws", "-b", "gcp", "-r", "us-east-1", "--fleet", "f1",
                 "--max-duration", "2h", "-e", "A=2", "-e", "C=3")
    out = apply_overrides(TASK, args, {})
    assert out["name"] == "other"
    assert out["resources"] == {"gpu": "H100:2", "memory": "64GB.."}
    assert out["max_price"] == 2.5 and out["spot_policy"] == "spot"
    assert out["backends"] == ["aws", "gcp"] and out["regions"] == ["us-east-1"]
    assert out["fleets"] == ["f1"] and out["max_duration"] == "2h"
    assert out["env"] == {"A": "2", "B": None, "C": "3"}
    assert TASK["name"] == "t"  # the input is not modified


def test_no_flags_no_changes():
    assert apply_overrides(TASK, parse(), {}) == TASK


def test_creation_and_retry_flags():
    assert apply_overrides(TASK, parse("-R"), {})["creation_policy"] == "reuse"
    assert apply_overrides(TASK, parse("--dont-destroy"), {})["idle_duration"] == "off"
    assert apply_overrides(TASK, parse("--retry"), {})["retry"] is True
    assert apply_overrides(TASK, parse("--no-retry"), {})["retry"] is False
    assert apply_overrides(TASK, parse("--retry-duration", "3h"), {})["retry"] == {
        "duration": "3h"
    }
    with pytest.raises(CLIError, match="mutually exclusive"):
        check_exclusive(parse("-R", "--idle-duration", "1h"))
    with pytest.raises(CLIError, match="mutually exclusive"):
        check_exclusive(parse("--retry", "--retry-duration", "1h"))


def test_ports_replace_same_container_port():
    out = apply_overrides(TASK, parse("-p", "9000:8080", "-p", "7000"), {})
    assert out["ports"] == ["9000:8080", "7000"]
    with pytest.raises(CLIError):
        apply_overrides({"type": "service", "port": 80}, parse("-p", "80"), {})


def test_run_args_are_shell_quoted():
    out = apply_overrides(TASK, parse(), {}, ["--lr", "1e-3", "a b"])
    assert out["commands"] == ["python train.py --lr 1e-3 'a b'"]
    assert substitute_run_args(["x ${{run.args}}"], []) == ["x "]
    with pytest.raises(CLIError):
        apply_overrides({"type": "dev-environment"}, parse(), {}, ["x"])


def test_env_flags_and_resolution():
    assert parse_env_flags(["A=1", "B"], {"B": "local"}) == {"A": "1", "B": "local"}
    with pytest.raises(CLIError, match="Environment variable B is not set"):
        parse_env_flags(["B"], {})
    assert resolve_env({"A": "1", "B": None}, {"B": "x"}) == {"A": "1", "B": "x"}
    with pytest.raises(CLIError, match="Environment variable B is not set"):
        resolve_env({"B": None}, {})


def test_profile_fills_only_unset_values():
    conf = {"type": "task", "max_price": 1.0, "spot_policy": None}
    profile = {"name": "p", "default": True, "max_price": 5.0, "spot_policy": "spot"}
    assert apply_profile(conf, profile) == {"type": "task", "max_price": 1.0,
                                            "spot_policy": "spot"}


@pytest.mark.parametrize("name", ["ab", "my-run-1", "a" + "b" * 40])
def test_valid_run_names(name):
    check_run_name(name)


@pytest.mark.parametrize("name", ["a", "My-run", "1run", "run_x", "a" + "b" * 41])
def test_invalid_run_names(name):
    with pytest.raises(CLIError, match="Invalid run name"):
        check_run_name(name)
