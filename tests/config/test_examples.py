"""Every shipped example loads, and `hello` stays runnable on a plain laptop."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.models.configurations import TaskConfiguration
from dstack.models.loading import load_configuration

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yml"))


def test_there_are_enough_examples() -> None:
    assert len(EXAMPLES) >= 10
    kinds = {load_configuration(p).type for p in EXAMPLES}
    assert kinds == {"dev-environment", "task", "service", "fleet", "volume", "gateway"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    conf = load_configuration(path)
    assert conf.model_dump(mode="json")["type"] == conf.type


def test_hello_is_cpu_only_without_image() -> None:
    conf = load_configuration(EXAMPLES[0].parent / "hello.dstack.yml")
    assert isinstance(conf, TaskConfiguration)
    assert conf.name == "hello"
    assert conf.image is None
    assert conf.commands[0] == 'echo "Hello, world!"'
    assert conf.resources.gpu is not None and conf.resources.gpu.count.max is None
    assert conf.resources.gpu.count.min == 0
