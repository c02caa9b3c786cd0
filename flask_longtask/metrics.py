"""Prometheus metrics of the jobs, in the text format, through ``prometheus_client``
(``pip install "Flask-LongTask[metrics]"``): the dashboard serves them at its prefix +
``/metrics``, behind its ``authorize``.

Everything is read from the backend at each scrape, so every web process answers the same: the
tallies of the jobs that ended (:meth:`Backend.job_tallies
<flask_longtask.backends.Backend.job_tallies>`, written with each job's end, so current the
moment a job has ended) and the counts of the listing index (:meth:`LongTask.counts
<flask_longtask.LongTask.counts>`). Nothing is counted in the process's memory, which under
gunicorn would give each worker process its own numbers.

==========================================  =========  =============================================
``longtask_jobs_finished_total``            counter    jobs that ended, by ``task`` and ``status``
                                                       (``succeeded``, ``failed``, ``cancelled``)
``longtask_job_duration_seconds``           histogram  how long the jobs that ended ran, by ``task``
                                                       (from the start of their last attempt; jobs
                                                       cancelled before they started are not in it)
``longtask_job_retries_total``              counter    retries (attempts after the first) of the
                                                       jobs that ended, by ``task``
``longtask_jobs``                           gauge      stored jobs by ``status`` (those not expired
                                                       or purged)
``longtask_jobs_running``                   gauge      jobs running now
``longtask_queue_length``                   gauge      jobs waiting for a worker, where the backend
                                                       can tell
``longtask_workers``                        gauge      workers, where the backend can tell here
==========================================  =========  =============================================
"""

from __future__ import annotations

import math
import typing as t

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('The metrics need prometheus_client: pip install "Flask-LongTask[metrics]"') from err

from .backends.entry import DURATION_BUCKETS
from .job import JobStatus
from .listing import counts

if t.TYPE_CHECKING:  # pragma: no cover
    from prometheus_client import Metric

    from .store import JobStore

#: The ``Content-Type`` of :func:`exposition`'s text.
CONTENT_TYPE: t.Final[str] = CONTENT_TYPE_LATEST


class JobsCollector(Collector):
    """Reads the metrics from ``store``'s backend at each collection (each scrape)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> t.Iterator[Metric]:
        yield from self._ended()
        now = counts(self.store)
        stored = GaugeMetricFamily("longtask_jobs", "Stored jobs, by status.", labels=["status"])
        for status in JobStatus:
            stored.add_metric([status.value], now.get(status.value, 0))
        yield stored
        yield GaugeMetricFamily("longtask_jobs_running", "Jobs running now.", value=now.get("running", 0))
        if "queue_length" in now:
            yield GaugeMetricFamily("longtask_queue_length", "Jobs waiting for a worker.", value=now["queue_length"])
        if "workers" in now:
            yield GaugeMetricFamily("longtask_workers", "Workers that run jobs.", value=now["workers"])

    def _ended(self) -> t.Iterator[Metric]:
        tallies = self.store.backend.job_tallies()
        if tallies is None:  # (a backend that keeps none: no counters, rather than wrong ones)
            return
        finished = CounterMetricFamily(
            "longtask_jobs_finished", "Jobs that ended, by task and status.", labels=["task", "status"]
        )
        retries = CounterMetricFamily("longtask_job_retries", "Retries of the jobs that ended.", labels=["task"])
        by_status: dict[tuple[str, str], int] = {}
        by_task: dict[str, dict[float, int]] = {}
        seconds: dict[str, float] = {}
        retried: dict[str, int] = {}
        for tally in tallies:
            key = (tally.task, tally.status)
            by_status[key] = by_status.get(key, 0) + tally.jobs
            retried[tally.task] = retried.get(tally.task, 0) + tally.retries
            if tally.bound is not None:
                buckets = by_task.setdefault(tally.task, {})
                buckets[tally.bound] = buckets.get(tally.bound, 0) + tally.jobs
                seconds[tally.task] = seconds.get(tally.task, 0.0) + tally.seconds
        for (task, status), n in sorted(by_status.items()):
            finished.add_metric([task, status], n)
        for task, n in sorted(retried.items()):
            retries.add_metric([task], n)
        duration = HistogramMetricFamily(
            "longtask_job_duration_seconds", "How long the jobs that ended ran, by task.", labels=["task"]
        )
        for task, buckets in sorted(by_task.items()):
            cumulative, running = [], 0
            for bound in (*DURATION_BUCKETS, math.inf):
                running += buckets.get(bound, 0)
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
            duration.add_metric([task], cumulative, sum_value=seconds[task])
        yield finished
        yield retries
        yield duration


def exposition(store: JobStore) -> bytes:
    """The metrics of ``store``'s jobs in Prometheus's text format, read now."""
    registry = CollectorRegistry(auto_describe=False)  # (one per scrape: nothing kept in memory)
    registry.register(JobsCollector(store))
    return generate_latest(registry)
