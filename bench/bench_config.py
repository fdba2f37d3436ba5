"""How long does parsing 1,000 varied configurations take? (target: well under 1 second)

Run: `python bench/bench_config.py [--repeat N] [--count N]`. The configurations are built
from the shipped examples with varied names, GPU specs, env and volumes, so every grammar
path is exercised; each repeat times one whole pass and the median is printed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dstack.models.configurations import parse_configuration  # noqa: E402
from dstack.models.yaml_lines import load_yaml  # noqa: E402

GPUS = ["A100:40GB:2", "24GB..", "80GB", "H100:8", "1..2", "nvidia:2", "amd:MI300X:8",
        "16GB..24GB:1..2", "A10G,A100", "tpu:v5litepod-8", 0, 2,
        {"name": ["H100", "H200"], "memory": "80GB..", "count": "4..8"}]  # fmt: skip
CPUS = ["4..", "arm:4", "x86:8", 16, "2..8", {"min": 2, "max": 4}]


def build_corpus(count: int) -> list[dict]:
    """`count` configurations, cycling through the examples and varying their fields."""
    examples = [load_yaml(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yml"))]
    corpus = []
    for i in range(count):
        conf = copy.deepcopy(examples[i % len(examples)])
        conf["name"] = f"run-{i}"
        if conf["type"] in ("task", "dev-environment", "service") and "groups" not in conf:
            resources = conf.setdefault("resources", {})
            resources["gpu"] = GPUS[i % len(GPUS)]
            resources["cpu"] = CPUS[i % len(CPUS)]
            resources["memory"] = f"{8 + i % 64}GB.."
            conf["env"] = {f"VAR_{j}": j for j in range(i % 5)}
            conf["volumes"] = [f"vol-{i}:/data", "/mnt/cache:/root/.cache"]
            conf["max_duration"] = ["1h", "90m", "1h30m", "off", 3600][i % 5]
        corpus.append(conf)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    corpus = build_corpus(args.count)
    timings = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for conf in corpus:
            parse_configuration(conf)
        timings.append(time.perf_counter() - start)
    median = statistics.median(timings)
    print(
        f"parsed {args.count} configurations x {args.repeat}: median {median:.3f}s "
        f"(min {min(timings):.3f}s, max {max(timings):.3f}s)"
    )
    texts = [yaml.safe_dump(conf) for conf in corpus]
    with_yaml = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for text in texts:
            parse_configuration(load_yaml(text))
        with_yaml.append(time.perf_counter() - start)
    print(f"including YAML parsing of the text: median {statistics.median(with_yaml):.3f}s")
    sys.exit(0 if median < 1.0 else 1)


if __name__ == "__main__":
    main()
