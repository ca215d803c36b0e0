"""APScheduler wiring: one interval job per watch and one for the outbox.

No decisions live here. ``guarded`` is the one place that catches every
exception: a bug in one check is logged with its traceback and counted, and the
scheduler goes on with the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from watcher.logs import get_logger

log = get_logger("watcher.scheduler")

OUTBOX_JOB_ID = "outbox"


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: its id, period and jitter in seconds, and what it runs."""

    id: str
    seconds: float
    jitter: float
    run: Callable[[], Awaitable[object]]


async def guarded(job_id: str, run: Callable[[], Awaitable[object]]) -> None:
    """Run one job; whatever it raises is logged and never reaches the scheduler.

    This is the one place that catches every exception: a bug in one check must
    not stop the others. A job cancelled because the service stops is logged as
    such, not as a crash.
    """
    try:
        await run()
    except asyncio.CancelledError:
        log.info("job.cancelled", job_id=job_id)
    except Exception:
        log.exception("job.crashed", job_id=job_id)


def build(jobs: Sequence[Job], *, start_at: datetime) -> AsyncIOScheduler:
    """A scheduler with ``jobs`` added, each first run at ``start_at``.

    A job never runs twice at once (a check slower than its interval skips the
    overlapping run), missed runs collapse into one, and a run late because the
    loop was busy still happens.
    """
    scheduler = AsyncIOScheduler(timezone="UTC")
    for job in jobs:
        trigger = IntervalTrigger(seconds=job.seconds, jitter=job.jitter or None)
        scheduler.add_job(
            guarded,
            trigger,
            args=(job.id, job.run),
            id=job.id,
            name=job.id,
            next_run_time=start_at,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    return scheduler


def describe(scheduler: AsyncIOScheduler) -> list[dict[str, Any]]:
    """Job ids with their trigger intervals."""
    return [
        {"id": job.id, "seconds": job.trigger.interval.total_seconds()}
        for job in scheduler.get_jobs()
    ]
