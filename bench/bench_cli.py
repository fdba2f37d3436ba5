"""Whole-process startup time of `dstack --version` and `dstack --help`.

Usage: python bench/bench_cli.py [-n RUNS] [--dstack PATH]
Prints the median and p90 wall time of each command, in milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)


def p90(values: list[float]) -> float:
    return values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    default = Path(sys.executable).with_name("dstack")
    parser.add_argument(
        "--dstack", default=str(default) if default.exists() else shutil.which("dstack")
    )
    args = parser.parse_args()
    if not args.dstack:
        print("dstack executable not found; pass --dstack PATH", file=sys.stderr)
        return 1
    for label in ("--version", "--help"):
        times = measure([args.dstack, label], args.runs)
        print(
            f"dstack {label:<10} median {statistics.median(times):6.1f} ms"
            f"   p90 {p90(times):6.1f} ms   ({args.runs} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
