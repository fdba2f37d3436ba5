"""Jobs of one host are observed through one shared list call (`reconcilers/host_jobs.py`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dstack.server.agent_client import AgentUnreachableError
from dstack.server.reconcilers.host_jobs import HostJobs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeAgent:
    """Counts list calls; each call waits on `gate` so callers can pile up meanwhile."""

    def __init__(self, jobs: list[str]) -> None:
        self.jobs = jobs
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def list_jobs(self) -> list[dict[str, Any]]:
        self.calls += 1
        snapshot = list(self.jobs)  # what the host held when it was asked
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return [{"id": j, "status": "running"} for j in snapshot]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_observers_share_one_list_call() -> None:
    async def main() -> None:
        agent = FakeAgent([f"j{i}" for i in range(50)])
        agent.gate = asyncio.Event()
        cache = HostJobs(max_age=0.25, clock=Clock())
        tasks = [
            asyncio.ensure_future(cache.job("i1", agent, f"j{i}"))  # type: ignore[arg-type]
            for i in range(50)
        ]
        await asyncio.sleep(0)
        agent.gate.set()
        states = await asyncio.gather(*tasks)
        assert agent.calls == 1
        assert [s["id"] for s in states] == [f"j{i}" for i in range(50)]

    run(main())


def test_a_recent_snapshot_is_reused_and_an_old_one_refetched() -> None:
    async def main() -> None:
        agent, clock = FakeAgent(["a", "b"]), Clock()
        cache = HostJobs(max_age=0.25, clock=clock)
        assert (await cache.job("i1", agent, "a"))["id"] == "a"  # type: ignore[arg-type,index]
        clock.now += 0.2
        assert (await cache.job("i1", agent, "b"))["id"] == "b"  # type: ignore[arg-type,index]
        assert agent.calls == 1
        clock.now += 0.1  # 0.3 s after the list was asked for: too old
        await cache.job("i1", agent, "a")  # type: ignore[arg-type]
        assert agent.calls == 2

    run(main())


def test_hosts_do_not_share() -> None:
    async def main() -> None:
        one, two = FakeAgent(["a"]), FakeAgent(["b"])
        cache = HostJobs(max_age=10, clock=Clock())
        assert (await cache.job("i1", one, "a")) is not None  # type: ignore[arg-type]
        assert (await cache.job("i2", two, "b")) is not None  # type: ignore[arg-type]
        assert (await cache.job("i2", two, "a")) is None  # type: ignore[arg-type]
        assert one.calls == 1

    run(main())


def test_a_miss_is_judged_only_on_a_list_asked_for_after_the_observer() -> None:
    """A job started after the cached list was taken is missing from it: that is no 404.
    The observer asks again; a job missing from a list asked after it asked is unknown."""

    async def main() -> None:
        agent, clock = FakeAgent(["old"]), Clock()
        cache = HostJobs(max_age=0.25, clock=clock)
        await cache.job("i1", agent, "old")  # type: ignore[arg-type]
        agent.jobs.append("new")  # started since
        clock.now += 0.1
        state = await cache.job("i1", agent, "new")  # type: ignore[arg-type]
        assert state is not None and state["id"] == "new"
        assert agent.calls == 2
        clock.now += 0.01
        assert await cache.job("i1", agent, "gone") is None  # type: ignore[arg-type]
        assert agent.calls == 3  # the snapshot of 0.01 s ago predates this observer

    run(main())


def test_a_miss_in_a_fresh_list_is_final() -> None:
    async def main() -> None:
        agent = FakeAgent(["a"])
        cache = HostJobs(max_age=0.25, clock=Clock())
        assert await cache.job("i1", agent, "gone") is None  # type: ignore[arg-type]
        assert agent.calls == 1  # asked after the observer asked: no second call

    run(main())


def test_an_error_reaches_every_waiter_and_is_not_cached() -> None:
    async def main() -> None:
        agent = FakeAgent(["a"])
        agent.gate = asyncio.Event()
        agent.error = AgentUnreachableError("down")
        cache = HostJobs(max_age=10, clock=Clock())
        tasks = [
            asyncio.ensure_future(cache.job("i1", agent, "a"))  # type: ignore[arg-type]
            for _ in range(5)
        ]
        await asyncio.sleep(0)
        agent.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, AgentUnreachableError) for r in results)
        assert agent.calls == 1
        agent.error = None
        assert await cache.job("i1", agent, "a") is not None  # type: ignore[arg-type]
        assert agent.calls == 2

    run(main())


def test_a_cancelled_observer_does_not_cancel_the_shared_fetch() -> None:
    async def main() -> None:
        agent = FakeAgent(["a"])
        agent.gate = asyncio.Event()
        cache = HostJobs(max_age=10, clock=Clock())
        first = asyncio.ensure_future(cache.job("i1", agent, "a"))  # type: ignore[arg-type]
        second = asyncio.ensure_future(cache.job("i1", agent, "a"))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        first.cancel()
        agent.gate.set()
        assert (await second)["id"] == "a"  # type: ignore[index]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert agent.calls == 1

    run(main())


class MetricsAgent(FakeAgent):
    """Answers samples newer than the `metrics_after` asked, as the agent does."""

    def __init__(self, jobs: list[str]) -> None:
        super().__init__(jobs)
        self.samples = {"j1": [{"ts": 1.0}, {"ts": 2.0}]}
        self.asked: list[float] = []

    async def list_jobs_with_metrics(self, after: float) -> Any:
        self.asked.append(after)
        states = await self.list_jobs()
        newer = {j: [s for s in v if s["ts"] > after] for j, v in self.samples.items()}
        return states, {j: v for j, v in newer.items() if v}


def test_samples_ride_the_list_and_each_is_asked_once() -> None:
    async def main() -> None:
        agent, clock, stored = MetricsAgent(["j1"]), Clock(), []

        async def sink(samples: dict[str, Any]) -> None:
            stored.append(samples)

        cache = HostJobs(max_age=0.25, clock=clock, metrics_sink=sink)
        await cache.job("i1", agent, "j1")  # type: ignore[arg-type]
        agent.samples["j1"].append({"ts": 3.0})
        clock.now += 1
        await cache.job("i1", agent, "j1")  # type: ignore[arg-type]
        clock.now += 1
        await cache.job("i1", agent, "j1")  # type: ignore[arg-type]
        assert agent.asked == [0.0, 2.0, 3.0]
        assert stored == [{"j1": [{"ts": 1.0}, {"ts": 2.0}]}, {"j1": [{"ts": 3.0}]}]

    run(main())


def test_a_failed_store_asks_for_the_same_samples_again() -> None:
    async def main() -> None:
        agent, clock = MetricsAgent(["j1"]), Clock()

        async def sink(samples: dict[str, Any]) -> None:
            raise RuntimeError("database is locked")

        cache = HostJobs(max_age=0.25, clock=clock, metrics_sink=sink)
        state = await cache.job("i1", agent, "j1")  # type: ignore[arg-type]
        assert state == {"id": "j1", "status": "running"}  # the job list still answers
        clock.now += 1
        await cache.job("i1", agent, "j1")  # type: ignore[arg-type]
        assert agent.asked == [0.0, 0.0]

    run(main())


class LongPollAgent(FakeAgent):
    """Answers each long poll with the next of `answers` ((jobs, cursor) pairs), then holds
    the next call until the test closes the watch."""

    def __init__(self, answers: list[tuple[list[dict[str, Any]], str | None]]) -> None:
        super().__init__([])
        self.answers = answers
        self.cursors: list[str | None] = []

    async def wait_jobs(self, changed_after: str | None, wait: float) -> Any:
        self.cursors.append(changed_after)
        if not self.answers:
            await asyncio.sleep(3600)
        return self.answers.pop(0)


def _job(job_id: str, status: str = "running", log_bytes: int = 0) -> dict[str, Any]:
    return {"id": job_id, "status": status, "log_bytes": log_bytes, "no_connections_secs": 0}


def test_the_long_poll_hands_on_the_jobs_that_moved() -> None:
    async def main() -> None:
        moved: list[list[str]] = []

        async def sink(ids: list[str]) -> None:
            moved.append(ids)

        agent = LongPollAgent([
            ([_job("a"), _job("b"), _job("z", "done")], "e:1"),  # the baseline: only an end
            ([_job("a", log_bytes=10), _job("b") | {"no_connections_secs": 5}], "e:2"),
            ([_job("a", "done", 10), _job("b"), _job("c")], "e:3"),
        ])
        agent.jobs = ["a", "b"]
        cache = HostJobs(max_age=0.25, clock=Clock(), change_sink=sink)
        await cache.job("i1", agent, "a")  # type: ignore[arg-type]
        for _ in range(50):
            await asyncio.sleep(0)
        await cache.close()
        # Output and an exit move a job, a clock (no_connections_secs) does not; a job new
        # on the host does.
        assert moved == [["z"], ["a"], ["a", "c"]]
        assert agent.cursors == [None, "e:1", "e:2", "e:3"]

    run(main())


def test_the_long_poll_ends_when_the_host_is_no_longer_observed() -> None:
    async def main() -> None:
        clock = Clock()
        gate = asyncio.Event()

        class Held(LongPollAgent):
            async def wait_jobs(self, changed_after: str | None, wait: float) -> Any:
                self.cursors.append(changed_after)
                if changed_after is not None:
                    await gate.wait()  # held: nothing changed on the host
                return [_job("a")], "e:1"

        agent = Held([])
        agent.jobs = ["a"]
        cache = HostJobs(max_age=0.25, clock=clock, change_sink=lambda ids: asyncio.sleep(0))
        await cache.job("i1", agent, "a")  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        clock.now += 1000  # nobody asked about the host's jobs since
        gate.set()  # the held poll runs out
        for _ in range(10):
            await asyncio.sleep(0)
        assert all(t.done() for t in cache._watches.values())
        assert agent.cursors == [None, "e:1"]
        await cache.close()

    run(main())


def test_no_long_poll_from_an_agent_without_one() -> None:
    async def main() -> None:
        agent = LongPollAgent([([_job("a")], None)])
        agent.jobs = ["a"]
        cache = HostJobs(max_age=0.25, clock=Clock(), change_sink=lambda ids: asyncio.sleep(0))
        await cache.job("i1", agent, "a")  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        assert agent.cursors == [None]  # answered without a cursor: the poll alone from then
        await cache.close()

    run(main())


def test_a_list_older_than_the_long_polls_news_is_not_reused() -> None:
    """The pass the long poll woke must see what moved: a cached list asked for before the
    news (still within its reuse age) is not good enough."""

    async def main() -> None:
        clock = Clock()
        gate = asyncio.Event()

        class News(LongPollAgent):
            async def wait_jobs(self, changed_after: str | None, wait: float) -> Any:
                self.cursors.append(changed_after)
                if changed_after is None:
                    return [_job("a")], "e:1"
                if changed_after == "e:1":
                    await gate.wait()
                    return [_job("a", "done")], "e:2"
                await asyncio.sleep(3600)

        agent = News([])
        agent.jobs = ["a"]
        cache = HostJobs(max_age=0.25, clock=clock, change_sink=lambda ids: asyncio.sleep(0))
        await cache.job("i1", agent, "a")  # type: ignore[arg-type]
        assert agent.calls == 1
        clock.now += 0.1  # the cached list is still young enough to reuse...
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        clock.now += 0.01
        assert await cache.job("i1", agent, "a") is not None  # ...but older than the news
        assert agent.calls == 2
        await cache.close()

    run(main())
