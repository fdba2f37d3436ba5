"""Generated run names and the name rule."""

from __future__ import annotations

import random
import re

import pytest

from dstack.server.services.names import (
    ADJECTIVES,
    ANIMALS,
    generate_name,
    invalid_name_message,
    is_valid_name,
)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("ab", True),
        ("wet-mangust-1", True),
        ("a" * 41, True),
        ("a" * 42, False),
        ("a", False),
        ("", False),
        ("1abc", False),
        ("-abc", False),
        ("Abc", False),
        ("a_b", False),
        ("a.b", False),
        ("a b", False),
    ],
)
def test_is_valid_name(name: str, valid: bool) -> None:
    assert is_valid_name(name) is valid


def test_trailing_newline_is_invalid() -> None:
    assert is_valid_name("my-run\n") is False


def test_generate_name_format_and_determinism() -> None:
    a = generate_name(set(), random.Random(7))
    assert a == generate_name(set(), random.Random(7))
    assert re.fullmatch(r"[a-z]+-[a-z]+-1", a)
    adjective, animal, _ = a.split("-")
    assert adjective in ADJECTIVES and animal in ANIMALS


def test_generate_name_skips_taken_numbers() -> None:
    first = generate_name(set(), random.Random(3))
    base = first.rsplit("-", 1)[0]
    taken = {f"{base}-{n}" for n in range(1, 5)}
    assert generate_name(taken, random.Random(3)) == f"{base}-5"


def test_generated_names_are_valid() -> None:
    rng = random.Random(0)
    for _ in range(500):
        assert is_valid_name(generate_name(set(), rng))
    longest = max(ADJECTIVES, key=len) + "-" + max(ANIMALS, key=len) + "-99"
    assert is_valid_name(longest)


def test_generate_name_gives_up_when_everything_is_taken() -> None:
    taken = {f"{a}-{b}-{n}" for a in ADJECTIVES for b in ANIMALS for n in range(1, 100)}
    with pytest.raises(RuntimeError, match="could not generate a free run name"):
        generate_name(taken, random.Random(1))


def test_invalid_name_message() -> None:
    assert invalid_name_message("run", "Bad") == (
        "Invalid run name 'Bad': use 2-41 characters, lowercase letters, digits and '-', "
        "starting with a letter"
    )


def test_one_rule_fullmatch_refuses_a_trailing_newline_and_shows_names_short() -> None:
    from dstack.models.names import is_valid_name, name_problem

    assert is_valid_name("fleet-a") and not is_valid_name("fleet-a\n")
    message = name_problem("fleet", "\x1b[31m" + "a" * 10_000) or ""
    assert "\x1b" not in message and len(message) < 200 and "10005 characters" in message


def test_http_messages_are_short_and_escaped() -> None:
    from dstack.server.http_errors import short

    assert short("a\nb\x00c") == "a\\nb\\x00c"
    assert short("x" * 5000, 10) == "x" * 10 + "... (5000 characters)"
