"""Running jobs are observed through one list call per host, not one call per job.

Every running job is looked at about every `running_job_poll_seconds`. Asking the agent about
each job alone costs a host with N jobs N requests per interval; the agent answers every job
of its host in one `list_jobs` call. `HostJobs` keeps the last such answer per instance for a
fraction of the interval and shares one fetch in flight among all the jobs that ask meanwhile,
so a host costs about one small request per pass, however many jobs it runs.

The poll is the safety net. While jobs of a host are observed, `HostJobs` also holds one long
poll open to its agent (LIST_JOBS with `changed_after`/`wait`): the agent answers as soon as
one of its jobs starts, exits, writes output or gets its SSH server up, and `on_change`
receives the ids of the jobs whose reported state moved, so their passes run now rather than
at the next poll. The long poll only wakes: its answers never stand in for an observation
(their list may predate a start the observer knows of).

A job missing from the list is what a 404 was: the agent has no record of it. A miss is never
judged on a list asked for before the observer itself asked: the job may have been started in
between (by this server, or another replica), so a miss in an older snapshot is checked again
with a fresh one. A job that is present may be seen up to `max_age` late, as with any poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dstack.server.agent_client import FINISHED, AgentClient, AgentClientError, JobState

log = logging.getLogger(__name__)

# Receives each host's new resource samples (job id -> samples), e.g. to store them.
MetricsSink = Callable[[dict[str, list[dict[str, Any]]]], Awaitable[None]]

# Receives the ids of jobs whose state on their agent moved.
ChangeSink = Callable[[list[str]], Awaitable[None]]

# Entries older than this many `max_age` are dropped when the table is tidied.
_KEEP_AGES = 100
# How long one long poll is held open by the agent.
WATCH_WAIT = 20.0
# A host's long poll ends once no job of it has been observed for this long.
WATCH_IDLE = 30.0
# After a failed long poll (agent restarting, unreachable): the poll alone meanwhile.
WATCH_RETRY = 1.0
# The fields whose change is worth a job pass now (not `no_connections_secs`: a clock).
_WATCHED = ("status", "exit_status", "log_bytes", "ssh_port", "ssh_ready", "ssh_error", "ports",
            "listen_port", "stop_requested")  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """Every job of one host, as the agent listed them; `asked_at` is when the list was
    requested (monotonic), the conservative time for freshness."""

    asked_at: float
    jobs: dict[str, JobState]


# A fetch in flight: when its list was asked for, and its result to come.
_Flight = tuple[float, "asyncio.Future[Snapshot]"]


class HostJobs:
    """A small coalescing cache of each host's job list, keyed by instance id."""

    def __init__(
        self,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        metrics_sink: MetricsSink | None = None,
        change_sink: ChangeSink | None = None,
    ) -> None:
        self.max_age = max_age
        self._changes = change_sink
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._observed: dict[str, float] = {}
        self._changed_at: dict[str, float] = {}  # when the long poll last reported a move
        self._clock = clock
        # With a sink, each list also asks for the samples newer than the last ones received
        # from that host (0 after a restart: the agent's whole buffer; the sink dedups).
        self._sink = metrics_sink
        self._metrics_after: dict[str, float] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._inflight: dict[str, _Flight] = {}

    async def job(self, instance_id: str, client: AgentClient, job_id: str) -> JobState | None:
        """The agent's state of `job_id`, or None when the agent has no such job. Raises what
        the client raises (AgentUnreachableError, AgentError) for the whole host."""
        asked = self._clock()
        self._watch(instance_id, client, asked)
        # A list older than the long poll's last news is stale: that news is why we are here.
        fresh = max(asked - self.max_age, self._changed_at.get(instance_id, 0.0))
        snap = await self.snapshot(instance_id, client, not_before=fresh)
        state = snap.jobs.get(job_id)
        if state is not None or snap.asked_at >= asked:
            return state
        snap = await self.snapshot(instance_id, client, not_before=asked)
        return snap.jobs.get(job_id)

    async def snapshot(self, instance_id: str, client: AgentClient, not_before: float) -> Snapshot:
        """A list of the host's jobs asked for at or after `not_before`: the cached one, the
        one in flight, or a new fetch that later callers share."""
        cached = self._snapshots.get(instance_id)
        if cached is not None and cached.asked_at >= not_before:
            return cached
        inflight = self._inflight.get(instance_id)
        if inflight is None or inflight[0] < not_before:
            inflight = self._fetch(instance_id, client)
        # Shielded: one caller cancelled (its lease lost) must not cancel the others' fetch.
        return await asyncio.shield(inflight[1])

    def _fetch(self, instance_id: str, client: AgentClient) -> _Flight:
        asked = self._clock()
        task = asyncio.ensure_future(self._list(instance_id, client, asked))
        entry = (asked, task)
        self._inflight[instance_id] = entry

        def done(fut: asyncio.Future[Snapshot]) -> None:
            if self._inflight.get(instance_id) is entry:
                del self._inflight[instance_id]
            if not fut.cancelled():
                fut.exception()  # retrieved: every waiter may have gone (no "never retrieved")

        task.add_done_callback(done)
        return entry

    async def _list(self, instance_id: str, client: AgentClient, asked: float) -> Snapshot:
        if self._sink is None:
            states = await client.list_jobs()
        else:
            states = await self._list_with_metrics(instance_id, client, self._sink)
        snap = Snapshot(asked, {s["id"]: s for s in states})
        current = self._snapshots.get(instance_id)
        if current is None or current.asked_at <= asked:
            self._snapshots[instance_id] = snap
        self._tidy()
        return snap

    async def _list_with_metrics(
        self, instance_id: str, client: AgentClient, sink: MetricsSink
    ) -> list[JobState]:
        after = self._metrics_after.get(instance_id, 0.0)
        states, samples = await client.list_jobs_with_metrics(after)
        newest = max((s["ts"] for batch in samples.values() for s in batch), default=after)
        if samples:
            try:
                await sink(samples)
            except Exception:  # the job list matters more than a lost sample: ask again
                log.exception("storing metrics of instance %s failed", instance_id)
                return states
        self._metrics_after[instance_id] = max(float(newest), after)
        return states

    def _tidy(self) -> None:
        """Instances come and go: keep the table to the ones observed lately."""
        horizon = self._clock() - self.max_age * _KEEP_AGES
        for instance_id in [k for k, v in self._snapshots.items() if v.asked_at < horizon]:
            del self._snapshots[instance_id]
            self._metrics_after.pop(instance_id, None)
            self._changed_at.pop(instance_id, None)

    # -- the long poll ----------------------------------------------------------------------

    def _watch(self, instance_id: str, client: AgentClient, now: float) -> None:
        self._observed[instance_id] = now
        if self._changes is None:
            return
        task = self._watches.get(instance_id)
        if task is None or task.done():
            task = asyncio.ensure_future(self._watch_loop(instance_id, client, self._changes))
            self._watches[instance_id] = task

    async def _watch_loop(self, instance_id: str, client: AgentClient, sink: ChangeSink) -> None:
        """Hold a long poll open while the host's jobs are observed; hand on what moved.
        Ends on an agent error (the next observation starts a new one, with the current
        client) or an agent without long polls."""
        cursor: str | None = None
        seen: dict[str, tuple[Any, ...]] | None = None
        while self._clock() - self._observed.get(instance_id, 0.0) < WATCH_IDLE:
            try:
                states, cursor = await client.wait_jobs(cursor, WATCH_WAIT)
            except AgentClientError as e:
                log.debug("long poll of instance %s: %s", instance_id, e)
                await asyncio.sleep(WATCH_RETRY)
                return
            except Exception:  # a bug here must not go unseen, nor end in a tight loop
                log.exception("long poll of instance %s failed", instance_id)
                await asyncio.sleep(WATCH_RETRY)
                return
            if cursor is None:
                return
            now = {s["id"]: tuple(repr(s.get(k)) for k in _WATCHED) for s in states}
            if seen is None:
                # The baseline. A job that ended just before it (between an observation and
                # this first answer) would never move again: its end is handed on now.
                moved = [s["id"] for s in states if s.get("status") in FINISHED]
            else:
                moved = [job_id for job_id, sig in now.items() if seen.get(job_id) != sig]
            seen = now
            if moved:
                self._changed_at[instance_id] = self._clock()
                try:
                    await sink(moved)
                except Exception:  # the poll still sees them: a lost wake is only late
                    log.exception("waking the jobs of instance %s failed", instance_id)

    async def close(self) -> None:
        tasks = list(self._watches.values())
        self._watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
