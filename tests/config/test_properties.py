"""Bad input never escapes as anything but `ConfigurationError` (property-based).

Example counts are bounded so the whole module runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstack.errors import ConfigurationError
from dstack.models.common import parse_duration, parse_memory
from dstack.models.configurations import parse_configuration
from dstack.models.loading import load_configuration
from dstack.models.resources import ResourcesSpec
from dstack.models.yaml_lines import load_yaml

EXAMPLES = [
    load_yaml(p.read_text()) for p in sorted((Path(__file__).parents[2] / "examples").glob("*.yml"))
]
TYPES = ["task", "service", "dev-environment", "fleet", "volume", "gateway"]
KEYS = sorted({key for example in EXAMPLES for key in example} | {"gpu", "cpu", "min", "max"})
FAST = settings(
    max_examples=int(os.environ.get("CONFIG_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["off", "..", "1..", "A100:2", "8080:80", "*:80", "${{ secrets.x }}", "5m"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children,
                        max_size=4),
    ),
    max_leaves=12,
)  # fmt: skip

resource_text = st.text(alphabet="0123456789.:,GBMTXgbmtAHLnvidiarmx86 ", max_size=16)


def only_configuration_errors(fn, *args):
    with contextlib.suppress(ConfigurationError):
        fn(*args)


@FAST
@given(st.sampled_from(TYPES), st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_random_mappings(kind, data):
    only_configuration_errors(parse_configuration, {"type": kind, **data})


@FAST
@given(values)
def test_random_documents(data):
    only_configuration_errors(parse_configuration, data)


@FAST
@given(st.integers(min_value=0, max_value=len(EXAMPLES) - 1), st.data())
def test_mutated_examples(index, data):
    """Replace one field (possibly nested) of a valid example with random junk."""
    conf = copy.deepcopy(EXAMPLES[index])
    target = conf
    while isinstance(target, dict) and target and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(target, key=str)))
        if not isinstance(target[key], dict):
            break
        target = target[key]
    if isinstance(target, dict) and target:
        key = data.draw(st.sampled_from(sorted(target, key=str)))
        if key != "type" or target is not conf:
            target[key] = data.draw(values)
    only_configuration_errors(parse_configuration, conf)


@FAST
@given(st.sampled_from(["gpu", "cpu", "memory", "disk", "shm_size"]), resource_text)
def test_random_resource_strings(field, text):
    with contextlib.suppress(ValueError):  # pydantic's ValidationError is a ValueError
        ResourcesSpec.model_validate({field: text})
    only_configuration_errors(parse_configuration, {"type": "task", "commands": ["x"],
                                                    "resources": {field: text}})  # fmt: skip


@FAST
@given(st.text(max_size=12))
def test_scalar_parsers_raise_value_error_only(text):
    for parse in (parse_duration, parse_memory):
        with contextlib.suppress(ValueError):
            parse(text)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="type: task\n-[]{}'\"#&*!|>%@`,?0123456789abc", max_size=60))
def test_random_yaml_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "f.dstack.yml"
    path.write_text(text)
    only_configuration_errors(load_configuration, path)


@pytest.mark.parametrize("depth", [200, 5000])
def test_deep_nesting(depth):
    data: object = "x"
    for _ in range(depth):
        data = {"min": data}
    only_configuration_errors(parse_configuration, {"type": "task", "resources": {"cpu": data}})
