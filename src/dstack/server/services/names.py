"""Generated run names (`wet-mangust-1` style): short, readable, unique among active runs."""

from __future__ import annotations

import random

from dstack.models.names import RESOURCE_NAME_RE as NAME_RE
from dstack.models.names import name_problem

ADJECTIVES = (
    "amber",
    "bold",
    "brave",
    "calm",
    "clever",
    "cold",
    "cool",
    "crisp",
    "eager",
    "fast",
    "gentle",
    "glad",
    "grand",
    "happy",
    "keen",
    "kind",
    "lucky",
    "mellow",
    "nimble",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "shiny",
    "silent",
    "smart",
    "steady",
    "sunny",
    "swift",
    "tidy",
    "warm",
    "wet",
    "wild",
    "wise",
    "young",
    "zesty",
)
ANIMALS = (
    "badger",
    "beaver",
    "bison",
    "cat",
    "cobra",
    "crane",
    "deer",
    "dingo",
    "eagle",
    "ferret",
    "fox",
    "gecko",
    "heron",
    "horse",
    "ibis",
    "jaguar",
    "koala",
    "lemur",
    "lynx",
    "mangust",
    "moose",
    "newt",
    "otter",
    "owl",
    "panda",
    "puma",
    "quail",
    "raven",
    "seal",
    "shark",
    "sloth",
    "swan",
    "tiger",
    "walrus",
    "wolf",
    "yak",
    "zebra",
)


def is_valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def invalid_name_message(kind: str, name: str) -> str:
    return name_problem(kind, name) or f"Invalid {kind} name"


def generate_name(taken: set[str], rng: random.Random | None = None) -> str:
    rng = rng or random.Random()
    for _ in range(100):
        base = f"{rng.choice(ADJECTIVES)}-{rng.choice(ANIMALS)}"
        for n in range(1, 100):
            name = f"{base}-{n}"
            if name not in taken:
                return name
    raise RuntimeError("could not generate a free run name")
