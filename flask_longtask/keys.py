"""The key schema: the name of every key the core stores, spelled here only (``store``,
``cli``, ``http``, the backends and the tests ask :data:`keys`)."""

from __future__ import annotations

import typing as t


class Keys:
    """The key schema: every key the core stores (a backend may prefix them), spelled here only.

    ===================  =================================================================
    ``job:<id>``         the record: id, task, app, status, timestamps, error, memo key
    ``request:<id>``     what the worker needs: task name, app name, serialised arguments
    ``progress:<id>``    ``{"seq": n, "value": bytes}``, the latest progress value
    ``result:<id>``      the serialised return value of a succeeded job
    ``cancel:<id>``      present once cancellation was requested
    ``claim:<id>``       ``{"by": owner, "at": time}``, taken atomically by whoever moves the job
                         out of "queued": a worker (the job reads "running" from then on) or
                         ``"cancel"``
    ``end:<id>``         taken atomically by whoever ends the job's attempt: moves the job to
                         its final status, or queues it for its next attempt (a retry);
                         ``end:<id>:<n>`` for attempt ``n`` from 2 on
    ``alive:<id>``       heartbeat of a running job; expires when its worker is gone
    ``inflight:<key>``   the queued or running job of a memo key (single-flight)
    ``memo:<key>``       the succeeded job whose result answers a memo key
    ``memo-gen:<task>``  a token mixed into memo keys; replaced by ``clear_cache``
    ``access:<id>:<h>``  the HTTP API: a caller (``<h>``, a digest of who) may read job ``<id>``
    ``idem:<h>``         the HTTP API: the job an ``Idempotency-Key`` made (``<h>``, its digest)
    ``stream:<h>:<n>``   the HTTP API: owner ``<h>`` holds an open stream, its ``n``-th of
                         ``LONGTASK_SSE_MAX_STREAMS_PER_OWNER``; expires soon after the stream ends
    ``active:<h>:<n>``   the HTTP API: the ``n``-th of owner ``<h>``'s queued or running jobs (of
                         ``LONGTASK_HTTP_MAX_ACTIVE``); free once that job has ended
    ===================  =================================================================

    A package built on Flask-LongTask keeps its own keys under its own name (the Dash adapter's
    start with ``dash-adapter:``).

    >>> keys.job("abc"), keys.job_id("job:abc")
    ('job:abc', 'abc')
    """

    #: What every job record's key starts with: ``backend.scan(keys.JOB_PREFIX)`` lists jobs.
    JOB_PREFIX: t.Final = "job:"

    @staticmethod
    def job(job_id: str) -> str:
        return f"job:{job_id}"

    @staticmethod
    def request(job_id: str) -> str:
        return f"request:{job_id}"

    @staticmethod
    def progress(job_id: str) -> str:
        return f"progress:{job_id}"

    @staticmethod
    def result(job_id: str) -> str:
        return f"result:{job_id}"

    @staticmethod
    def cancel(job_id: str) -> str:
        return f"cancel:{job_id}"

    @staticmethod
    def claim(job_id: str) -> str:
        return f"claim:{job_id}"

    @staticmethod
    def end(job_id: str, attempt: int = 1) -> str:
        """The end claim of one attempt of a job: each attempt is ended once, by whoever adds
        it first, and a retry ends an attempt too (the next one has its own).

        >>> keys.end("abc"), keys.end("abc", 1), keys.end("abc", 3)
        ('end:abc', 'end:abc', 'end:abc:3')
        """
        return f"end:{job_id}" if attempt <= 1 else f"end:{job_id}:{attempt}"

    @staticmethod
    def alive(job_id: str) -> str:
        return f"alive:{job_id}"

    @staticmethod
    def inflight(memo_key: str) -> str:
        return f"inflight:{memo_key}"

    @staticmethod
    def memo(memo_key: str) -> str:
        return f"memo:{memo_key}"

    @staticmethod
    def memo_gen(task_name: str) -> str:
        """The generation of one task's memos; ``""``: of every task's."""
        return f"memo-gen:{task_name}"

    @staticmethod
    def access(job_id: str, digest: str) -> str:
        return f"access:{job_id}:{digest}"

    @staticmethod
    def idempotency(digest: str) -> str:
        return f"idem:{digest}"

    @staticmethod
    def stream_slot(digest: str, n: int) -> str:
        return f"stream:{digest}:{n}"

    @staticmethod
    def active_slot(digest: str, n: int) -> str:
        return f"active:{digest}:{n}"

    @classmethod
    def of_job(cls, job_id: str, attempts: int = 1) -> list[str]:
        """Every per-job key of a job that ran ``attempts`` attempts (its record's ``attempt``:
        one end claim each); ``flask longtask purge`` deletes them.

        >>> keys.of_job("abc", attempts=2)[-3:]
        ['end:abc', 'end:abc:2', 'alive:abc']
        """
        return [
            cls.job(job_id),
            cls.request(job_id),
            cls.progress(job_id),
            cls.result(job_id),
            cls.cancel(job_id),
            cls.claim(job_id),
            *(cls.end(job_id, n) for n in range(1, attempts + 1)),
            cls.alive(job_id),
        ]

    @classmethod
    def to_run(cls, job_id: str) -> list[str]:
        """What a worker reads as it claims a job: its record, its request and its cancel flag."""
        return [cls.job(job_id), cls.request(job_id), cls.cancel(job_id)]

    @classmethod
    def job_id(cls, key: str) -> str:
        """The job id in a job record's key (as :meth:`Backend.scan` yields them).

        :raises ValueError: ``key`` is not a job record's key.
        """
        if not key.startswith(cls.JOB_PREFIX):
            raise ValueError(f"{key!r} is not a job record's key (it does not start with {cls.JOB_PREFIX!r}).")
        return key[len(cls.JOB_PREFIX) :]


#: The key schema (:class:`Keys`): ``keys.job(job_id)``, ``keys.of_job(job_id)`` ...
keys: t.Final = Keys
