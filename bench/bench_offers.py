"""Offer and plan timings over a large gpuhunt catalog (in process, no server).

    python bench/bench_offers.py [--rows 10000] [--repeat 30]

A catalog of N synthetic rows is written in gpuhunt's CSV format (tests/catalog_fixture.py);
a test-double backend answers `offers()` from `OfferCatalog`. Timed, each as a whole call:
- load: the first `offers()` (CSV parse and conversion, in a thread), once;
- offers: a warm `OfferCatalog.offers()` (a filter over the rows in memory);
- plan: what a plan or `dstack offer` does per request: the backend capacity through the
  offer cache (warm: the backend's `offers_ttl` has not passed), `rank()` over it, and the
  first 50 offers serialised; for an unconstrained job (every row is a candidate), a GPU job
  and a spot job with a price limit.
- plan, cold cache: the same with the offer cache emptied first (one filter more).
Target (issue 10): a plan over a 10,000-row catalog answers in under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from catalog_fixture import CatalogCompute, write_test_catalog  # noqa: E402
from dstack.models.configurations import parse_configuration  # noqa: E402
from dstack.server.backends.base import OfferCache, OfferRequirements  # noqa: E402
from dstack.server.backends.catalog import OfferCatalog  # noqa: E402
from dstack.server.backends.registry import BackendRegistry  # noqa: E402
from dstack.server.scheduler.ranking import rank  # noqa: E402
from dstack.server.services.jobspecs import build_job_specs  # noqa: E402
from dstack.server.services.pool import PoolRows, backend_capacity, requirements_for  # noqa: E402

JOBS = {
    "any": {},
    "gpu A100:8": {"resources": {"gpu": "A100:8"}},
    "spot, <= $5": {"spot_policy": "spot", "max_price": 5},
}


def stats(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    ms = 1000
    return (
        f"{name:<28} median {statistics.median(s) * ms:8.2f} ms   "
        f"p90 {p90 * ms:8.2f} ms   (n={len(s)})"
    )


class Ctx:
    """What `backend_capacity` reads of the server context."""

    def __init__(self, backend: CatalogCompute) -> None:
        self.backends = BackendRegistry(shared=[backend])
        self.offer_cache = OfferCache()


def requirements(extra: dict):  # noqa: ANN201
    data = {
        "type": "task",
        "commands": [":"],
        "spot_policy": "auto",
        "resources": {"cpu": "1..", "memory": "0GB..", "gpu": "0.."},
    }
    data.update(extra)
    if "resources" in extra:
        data["resources"] = {"cpu": "1..", "memory": "0GB..", **extra["resources"]}
    conf = parse_configuration(data)
    job = build_job_specs("bench", conf, None)[0]
    return requirements_for(conf, job.requirements)


async def plan(ctx: Ctx, rows: PoolRows, req) -> int:  # noqa: ANN001
    capacity = await backend_capacity(ctx, rows, req, [])  # type: ignore[arg-type]
    ranking = rank(req, [], [capacity])
    shown = [c.offer.model_dump(mode="json") for c in ranking.candidates[:50]]
    return len(ranking.candidates) + 0 * len(shown)


async def timed(fn, repeat: int) -> tuple[list[float], object]:  # noqa: ANN001
    samples, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = await fn()
        samples.append(time.perf_counter() - start)
    return samples, result


async def run(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        write_test_catalog(Path(d), n, provider="bench")
        catalog = OfferCatalog(d)
        backend = CatalogCompute("bench", catalog)
        start = time.perf_counter()
        everything = await catalog.offers("bench", OfferRequirements())
        print(
            f"{'load ' + str(n) + ' rows':<28} {1000 * (time.perf_counter() - start):8.2f} ms"
            f"   ({len(everything)} offers)"
        )
        samples, _ = await timed(lambda: catalog.offers("bench", OfferRequirements()), repeat)
        print(stats("offers (all, warm)", samples))
        rows = PoolRows("main", [], [], {}, set())
        ctx = Ctx(backend)
        for name, extra in JOBS.items():
            req = requirements(extra)
            samples, found = await timed(lambda req=req: plan(ctx, rows, req), repeat)
            print(stats(f"plan: {name}", samples) + f"   {found} candidates")

            async def cold(req=req) -> int:  # noqa: ANN001
                ctx.offer_cache = OfferCache()
                return await plan(ctx, rows, req)

            samples, _ = await timed(cold, repeat)
            print(stats(f"plan: {name} (cold cache)", samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.repeat))


if __name__ == "__main__":
    main()
