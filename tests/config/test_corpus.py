"""The hand-written corpus (tests/config/corpus/*.yml): every case valid or failing as labelled."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dstack.errors import ConfigurationError
from dstack.models.loading import load_configuration

CORPUS_DIR = Path(__file__).parent / "corpus"


def _cases() -> list[dict]:
    cases = []
    for path in sorted(CORPUS_DIR.glob("*.yml")):
        for case in yaml.safe_load(path.read_text()):
            case["file"] = path.stem
            cases.append(case)
    return cases


CASES = _cases()


def test_corpus_is_big_and_balanced() -> None:
    assert len(CASES) >= 100
    assert len({c["id"] for c in CASES}) == len(CASES), "case ids must be unique"
    valid = sum(c["expect"] == "valid" for c in CASES)
    assert valid >= 40 and len(CASES) - valid >= 40


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']}/{c['id']}" for c in CASES])
def test_case(case: dict, tmp_path: Path) -> None:
    path = tmp_path / f"{case['id']}.dstack.yml"
    path.write_text(case["yaml"])
    if case["expect"] == "valid":
        conf = load_configuration(path)
        assert conf.model_dump(mode="json")["type"] == conf.type
        return
    with pytest.raises(ConfigurationError) as info:
        load_configuration(path)
    error = info.value
    assert case["expect"] in str(error)
    assert error.file == str(path)
    if "line" in case:
        assert error.line == case["line"], str(error)
