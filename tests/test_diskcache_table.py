"""The job table of DiskcacheBackend: large values, the sweep, waiting for SQLite's lock.

The backend's contract is the conformance suite (``test_diskcache_conformance.py``); these are
the parts of its storage that the contract does not reach.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import threading
import time
import types
import typing as t
from pathlib import Path

import pytest

from flask_longtask import JobStatus
from flask_longtask.backends import diskcache as diskcache_backend
from flask_longtask.backends.base import MISSING
from flask_longtask.backends.diskcache import DiskcacheBackend, handoff, waiting, wire
from flask_longtask.backends.diskcache import host as pool_module
from flask_longtask.backends.diskcache import table as _table
from flask_longtask.backends.diskcache.host import PoolHost
from flask_longtask.exceptions import JobFailedError
from flask_longtask.store import keys
from tests.helpers import wait_for
from tests.test_diskcache import host_pids, idle_worker, make_app, spy, the_worker

BIG = b"x" * (2**20 + 1)  # over the 1 MiB kept inline: stored as a file


def value_files(directory: Path) -> set[Path]:
    """The files diskcache wrote for large values (in its two-level hex subdirectories)."""
    return {p for p in directory.glob("*/*/*") if p.is_file()}


@pytest.fixture
def backend(tmp_path: Path) -> t.Iterator[DiskcacheBackend]:
    backend = DiskcacheBackend(tmp_path / "lt", workers=1, max_workers=1, embedded=False)
    yield backend
    backend.close()


def test_large_values_live_in_files_that_go_with_them(backend: DiskcacheBackend, tmp_path: Path) -> None:
    directory = tmp_path / "lt"
    backend.set("result:big", BIG)
    assert backend.get("result:big") == BIG
    assert backend.get_many(["result:big", "result:none"]) == [BIG, MISSING]
    [first] = value_files(directory)
    backend.set("result:big", {"replaced": BIG})  # overwritten by another large value
    assert backend.get("result:big") == {"replaced": BIG}
    assert backend.add("result:big", BIG) is False  # a losing add() leaves no file behind
    backend.table.empty_trash()
    assert first not in value_files(directory) and len(value_files(directory)) == 1
    backend.delete("result:big")
    backend.table.empty_trash()
    assert value_files(directory) == set()


def test_write_all_stores_every_row_once(backend: DiskcacheBackend, tmp_path: Path) -> None:
    """A new job's records go in as one statement; many rows, large values and a repeated key
    are written as separate writes would be, and a failed write leaves no value file."""
    directory = tmp_path / "lt"
    backend.write_all([("set", "job:a", {"n": 1}, None), ("set", "request:a", BIG, None)])
    assert backend.get_many(["job:a", "request:a"]) == [{"n": 1}, BIG]
    assert len(value_files(directory)) == 1
    backend.write_all([("set", f"job:{i}", i, None) for i in range(250)])  # over one statement's rows
    assert backend.get_many([f"job:{i}" for i in range(250)]) == list(range(250))
    backend.write_all([("set", "job:twice", 1, None), ("set", "job:twice", 2, None)])
    assert backend.get("job:twice") == 2
    unpicklable = threading.Lock()
    with pytest.raises(TypeError):  # a value that cannot be encoded fails the whole write
        backend.write_all(
            [("set", "job:b", 1, None), ("set", "request:b", BIG, None), ("set", "job:c", unpicklable, None)]
        )
    assert backend.get_many(["job:b", "request:b"]) == [MISSING, MISSING]
    assert len(value_files(directory)) == 1


class _Spy:
    """Pickles to itself, noting whether its thread held the writers' lock as it was encoded."""

    seen: t.ClassVar[list[bool]] = []

    def __init__(self, table: _table.Table) -> None:
        self.table = table

    def __reduce__(self) -> tuple[t.Any, ...]:
        _Spy.seen.append(self.table._state.locked)
        return (int, (7,))


def test_write_all_calls_locked_under_the_writers_lock_after_encoding(backend: DiskcacheBackend) -> None:
    """How a job is handed to a worker while its records are committed: the values are encoded
    first (never under the lock every process's writers queue on), then ``locked()`` runs with
    the lock held, then the rows are written and committed."""
    table = backend.table
    held: list[bool] = []
    _Spy.seen.clear()
    table.write_all([("set", "job:spy", _Spy(table), None)], locked=lambda: held.append(table._state.locked))
    assert (_Spy.seen, held) == ([False], [True])
    assert backend.get("job:spy") == 7 and not table._state.locked and not table.in_batch


def test_expired_large_values_are_swept_with_their_files(backend: DiskcacheBackend, tmp_path: Path) -> None:
    backend.set("result:big", BIG, expire=0.05)
    backend.set("result:small", 1)
    assert len(value_files(tmp_path / "lt")) == 1
    wait_for(lambda: backend.get("result:big") is MISSING, 10, "the large value to expire")
    assert backend.cleanup() == 1
    assert value_files(tmp_path / "lt") == set()
    assert backend.get("result:small") == 1


def test_sweep_reads_the_table_in_chunks(backend: DiskcacheBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_table, "_SWEEP_CHUNK", 7)
    for n in range(30):  # several jobs' keys, expired and not, across chunk boundaries
        backend.set(f"job:{n:02}", n, expire=0.05 if n % 3 else None)
        backend.set(f"alive:{n:02}", n, expire=0.05)
    wait_for(lambda: backend.get("alive:29") is MISSING, 10, "the keys to expire")
    assert backend.table.count() == 60
    assert backend.table.sweep() == 50
    assert sorted(backend.scan("job:")) == [f"job:{n:02}" for n in range(0, 30, 3)]
    assert backend.table.count() == 10


def test_keys_without_a_kind(backend: DiskcacheBackend) -> None:
    # "abc" and "abc:" are different keys, and scan() sees both under "ab".
    backend.set("abc", 1)
    backend.set("abc:", 2)
    backend.set("abc:d", 3)
    assert backend.get_many(["abc", "abc:", "abc:d"]) == [1, 2, 3]
    assert sorted(backend.scan("ab")) == ["abc", "abc:", "abc:d"]
    assert sorted(backend.scan("abc:")) == ["abc:", "abc:d"]


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's writer, as SQLite sees it: a connection holding the write lock."""
    locked = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)  # the other writer's transaction: what the test waits out
        con.execute("COMMIT")
        con.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return thread


def test_a_write_waits_for_another_writer(backend: DiskcacheBackend, tmp_path: Path) -> None:
    backend.set("job:warm", 0)
    holder = hold_write_lock(tmp_path / "lt" / "cache.db", 0.3)
    backend.set("job:x", 1)  # retried until the other transaction commits, not failed
    with backend.batch():
        backend.set("job:y", 2)
    holder.join()
    assert backend.get_many(["job:x", "job:y"]) == [1, 2]


def test_a_lock_held_too_long_is_a_clear_error(
    backend: DiskcacheBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.set("job:warm", 0)
    monkeypatch.setattr(_table, "BUSY_TIMEOUT", 0.05)
    holder = hold_write_lock(tmp_path / "lt" / "cache.db", 0.5)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            backend.set("job:x", 1)
    finally:
        holder.join()
    backend.set("job:x", 1)
    assert backend.get("job:x") == 1


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[PoolHost]:
    """Every pool a backend of this process starts to host during the test (``PoolHost.start``,
    spied): for the tests of the pool's own methods."""
    return spy(monkeypatch, PoolHost, "start", lambda pool: pool)


@pytest.fixture
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait in the host's process returns when the job ends, or at its timeout: not after
    ``RECHECK`` seconds, its safety net against an end nobody reports."""
    monkeypatch.setattr(diskcache_backend, "RECHECK", 60.0)


def state_keys(job_id: str) -> list[str]:
    """What a look of ``Job.result()`` asks for: the record, the claim, the heartbeat, the result."""
    return [keys.job(job_id), keys.claim(job_id), keys.alive(job_id), keys.result(job_id)]


def look(host: DiskcacheBackend, job_id: str, timeout: float) -> list[t.Any]:
    """A look of a wait that began a while ago (not its first)."""
    return host.wait(job_id, state_keys(job_id), timeout=timeout, elapsed=1.0)


def follows(host: DiskcacheBackend, job_id: str) -> bool:
    """Whether the pool of the host follows the job: the first look of a wait for it waits for
    the pool's word of its end (or answers from the end it kept), instead of reading first."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        waited = spy(monkeypatch, waiting, "wait_done", lambda pool, job_id, timeout: job_id)
        host.wait(job_id, state_keys(job_id), timeout=0.0, elapsed=0.0)
    return waited == [job_id]


@pytest.fixture
def gated(tmp_path: Path, pools: list[PoolHost]) -> t.Iterator[tuple[DiskcacheBackend, t.Any, Path]]:
    """A pool (hosted here) running one job that ends when the test creates its gate file."""
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            gate = tmp_path / "gate"
            job = jobs.wait_for_file.submit(str(gate))
            wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
            yield host, job, gate
    finally:
        host.close()


def test_waiters_in_the_host_process_are_woken_when_the_job_ends(
    gated: tuple[DiskcacheBackend, t.Any, Path], no_recheck: None
) -> None:
    host, job, gate = gated
    assert host.is_pool_host
    threading.Timer(0.2, gate.touch).start()  # ends the job while the waiter below waits
    started = time.monotonic()
    ended = look(host, job.id, 60)  # returns when the worker reports the job done
    assert time.monotonic() - started < 30
    assert ended[0]["status"] == JobStatus.SUCCEEDED.value
    assert job.status is JobStatus.SUCCEEDED
    started = time.monotonic()
    look(host, job.id, 60)  # ended already: returns at once
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("outcome", ["succeeded", "large", "failed", "cancelled"])
def test_a_waiter_in_the_host_is_handed_what_the_end_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_recheck: None, outcome: str
) -> None:
    """The worker sends its job's final record and result with its "done": a waiter in the host
    process reads nothing. A result too large for that is read from storage."""
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    get_many = host.get_many
    reads = spy(monkeypatch, host, "get_many", lambda keys: list(keys))
    value = b"x" * (wire.END_INLINE + 1) if outcome == "large" else b"small"
    try:
        with make_app(host).app_context():
            gate = tmp_path / "gate"
            job = jobs.wait_for_file.submit(str(gate), then=value, fail="boom" if outcome == "failed" else None)
            wait_for(lambda: job.status is JobStatus.RUNNING, 30, "the job to start")
            if outcome == "cancelled":  # requested while it runs (no forced stop): it ends cancelled
                host.set(keys.cancel(job.id), time.time(), 60)
            gate.touch()
            reads.clear()
            names = state_keys(job.id)
            ended = host.wait(job.id, names, timeout=60, elapsed=0.0)  # as Job.result() looks first
            status = JobStatus.SUCCEEDED if outcome == "large" else JobStatus(outcome)
            if outcome == "large":
                assert reads == [names]
            else:
                assert reads == []
            stored = get_many(names)
            assert ended[0] == stored[0] and ended[0]["status"] == status.value
            assert ended[3] == stored[3]  # the result (MISSING unless it succeeded)
            assert job.status is status
            if status is JobStatus.SUCCEEDED:
                assert job.result(timeout=10) == value
            elif status is JobStatus.FAILED:
                assert job.error is not None and job.error["message"] == "boom"
    finally:
        host.close()


def test_a_wait_in_the_host_reads_nothing_while_its_pool_follows_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_recheck: None
) -> None:
    """``Job.result()`` in the host, for a job its pool runs or ended moments ago, skips its
    first read and answers from what the worker sent with its "done". Once that is older than
    END_VALUES_FRESH, or the job has expired, it reads storage again (and misses an expired job)."""
    from flask_longtask.exceptions import JobNotFoundError
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    reads: list[list[str]] = []
    get_many = host.get_many
    monkeypatch.setattr(host, "get_many", lambda keys: reads.append(list(keys)) or get_many(keys))
    try:
        with make_app(host).app_context():
            gate = tmp_path / "gate"
            job = jobs.wait_for_file.submit(str(gate), then="ran")
            wait_for(lambda: follows(host, job.id), 30, "the pool to take the job")
            reads.clear()
            threading.Timer(0.1, gate.touch).start()
            assert job.result(timeout=30) == "ran"  # waited for it running, then handed its end
            assert reads == []
            assert follows(host, job.id) and job.result(timeout=30) == "ran"  # ended: no read either
            assert reads == []

            monkeypatch.setattr(waiting, "END_VALUES_FRESH", 0.0)
            assert not follows(host, job.id)
            reads.clear()
            assert job.result(timeout=30) == "ran" and reads != []  # no longer: read from storage

        monkeypatch.setattr(waiting, "END_VALUES_FRESH", 60.0)
        with make_app(host, LONGTASK_RESULT_EXPIRE=0.3).app_context():
            short = jobs.echo.submit("brief")
            assert short.result(timeout=30) == "brief"
            wait_for(lambda: get_many([keys.job(short.id)]) == [MISSING], 30, "the job to expire")
            assert not follows(host, short.id)  # its kept end is not used past its expiry
            with pytest.raises(JobNotFoundError):
                short.result(timeout=30)
    finally:
        host.close()


def test_a_wait_in_the_host_reads_first_for_a_queued_job_that_has_ended(tmp_path: Path, no_recheck: None) -> None:
    """A job cancelled while it waits in the queue stays there until a worker takes it (and
    skips it): no worker's "done" will answer for it, so a wait in the host reads first."""
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            gate = tmp_path / "gate"
            blocker = jobs.wait_for_file.submit(str(gate))
            wait_for(lambda: blocker.status is JobStatus.RUNNING, 30, "the worker to be busy")
            queued = jobs.echo.submit("never")
            # Queued here (once the dispatcher has taken it from its inbox): its end will wake a waiter.
            wait_for(lambda: follows(host, queued.id), 10, "the pool to follow the queued job")
            queued.cancel()
            assert host.queue_length() == 1  # still in the queue (or sent ahead: the pool's all the same)
            assert not follows(host, queued.id)
            assert queued.wait(timeout=5) is JobStatus.CANCELLED
            gate.touch()
            assert blocker.result(timeout=30) == "done"
    finally:
        host.close()


def test_the_ends_kept_for_waiters_in_the_host_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import diskcache_jobs as jobs

    monkeypatch.setattr(waiting, "END_VALUES_BYTES", 20_000)
    monkeypatch.setattr(waiting, "END_VALUES_FRESH", 60.0)  # however long the 30 jobs take
    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            done = [jobs.echo.submit(b"x" * 2000) for _ in range(30)]
            for job in done:
                assert job.result(timeout=30) == b"x" * 2000
            wait_for(lambda: follows(host, done[-1].id), 30, "the last end to be announced")
            kept = [job for job in done if follows(host, job.id)]
            assert 5 <= len(kept) < 15  # ~2 KB each
            assert kept == done[-len(kept) :]  # the latest
    finally:
        host.close()


def test_the_ends_kept_count_each_end_once() -> None:
    """What the recent ends wrote is kept up to END_VALUES_BYTES (the sizes of the workers'
    messages) and END_VALUES_JOBS; an end recorded twice counts once."""
    ids = [f"{n:032x}" for n in range(30)]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(waiting, "END_VALUES_BYTES", 10_000)
        ends = waiting.Ends()
        for job_id in [*ids, ids[-1], ids[-1]]:
            ends.add(job_id, {keys.job(job_id): {"status": "succeeded"}}, 1000)
            ends.announce()
        assert [job_id for job_id in ids if ends.values(job_id) is not None] == ids[-10:]
        monkeypatch.setattr(waiting, "END_VALUES_JOBS", 4)
        ends.add(ids[0], {keys.job(ids[0]): {"status": "failed"}}, 10)
        ends.announce()
        assert [job_id for job_id in ids if ends.values(job_id) is not None] == [ids[0], *ids[-3:]]
        assert ends.values(ids[0]) == {keys.job(ids[0]): {"status": "failed"}}


def _watched(host: DiskcacheBackend) -> bool:
    """Whether a thread waiting for a job reads its worker's pipe in place of the dispatcher."""
    return any(worker.watched for worker in host.pool_workers() or [])


def test_a_waiter_that_gives_up_hands_its_worker_back_to_the_dispatcher(
    gated: tuple[DiskcacheBackend, t.Any, Path],
) -> None:
    """A waiter reads its job's worker itself while it waits; when it stops waiting before the
    job ends, the dispatcher hears of the end (here: the pool's one worker runs the next job)."""
    from tests import diskcache_jobs as jobs

    host, job, gate = gated
    record, claim, *_ = look(host, job.id, 0.05)  # gives up: the job still runs
    assert record["status"] == JobStatus.QUEUED.value and claim is not MISSING
    assert not _watched(host)
    gate.touch()  # the job ends with nobody here waiting for it
    following = jobs.add.submit(2, 3)
    wait_for(lambda: following.status is JobStatus.SUCCEEDED, 30, "the next job to run on the same worker")
    assert job.status is JobStatus.SUCCEEDED
    assert following.result(timeout=10) == 5


def test_every_waiter_of_a_job_is_woken_when_it_ends(gated: tuple[DiskcacheBackend, t.Any, Path]) -> None:
    """One waiter reads the worker's "done"; the others learn of it from that one."""
    host, job, gate = gated
    results: list[t.Any] = []
    waiters = [threading.Thread(target=lambda: results.append(job.result(timeout=30))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    wait_for(lambda: _watched(host), 30, "a waiter to read the worker's pipe")
    gate.touch()
    for waiter in waiters:
        waiter.join(30)
    assert results == ["done"] * 3


def test_a_waiter_learns_at_once_that_the_worker_it_reads_died(tmp_path: Path) -> None:
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            pid_file = tmp_path / "pid"
            job = jobs.stubborn.submit(str(pid_file))
            wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", 30, "the job to start")
            failures: list[BaseException] = []

            def wait() -> None:
                try:
                    job.result(timeout=30)
                except BaseException as exc:
                    failures.append(exc)

            waiter = threading.Thread(target=wait)
            waiter.start()
            wait_for(lambda: _watched(host), 30, "the waiter to read the worker's pipe")
            started = time.monotonic()
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
            waiter.join(30)
            assert time.monotonic() - started < 2.0
            [failure] = failures
            assert isinstance(failure, JobFailedError)
            assert "killed by SIGKILL" in str(failure)
            assert jobs.add.submit(1, 1).result(timeout=30) == 2  # a new worker took its place
    finally:
        host.close()


def test_the_dispatcher_does_not_wait_for_a_message_a_waiter_took(
    gated: tuple[DiskcacheBackend, t.Any, Path], pools: list[PoolHost]
) -> None:
    """The dispatcher may find a worker's pipe ready, then a waiter read the message before the
    dispatcher got the mutex: it must not block on the empty pipe."""
    host, job, gate = gated
    [pool] = pools
    [worker] = pool.workers
    with pool.mutex:
        assert pool.read_messages(worker) is None  # nothing to read: returns at once
        assert [view.job_id for view in host.pool_workers() or []] == [job.id]
    gate.touch()
    assert job.result(timeout=30) == "done"


@pytest.mark.parametrize("where", ["here", "in another process"])
def test_a_waiter_in_the_host_is_woken_when_its_queued_job_is_cancelled(
    gated: tuple[DiskcacheBackend, t.Any, Path], tmp_path: Path, no_recheck: None, where: str
) -> None:
    """A job can end without the pool: cancelled while queued. The host's waiters hear of that
    too (from the process that cancelled it, through the FIFO), so they need not poll."""
    from flask_longtask.store import JobStore
    from tests import diskcache_jobs as jobs

    host, running, gate = gated
    assert host.is_pool_host  # a wait here blocks until the pool hears of the job's end
    queued = jobs.add.submit(1, 2)  # the pool's one worker is busy: it waits in the queue
    woken = threading.Event()
    waiter = threading.Thread(target=lambda: (look(host, queued.id, 30), woken.set()))
    waiter.start()
    other = DiskcacheBackend(tmp_path / "pool", embedded=False)  # a process that hosts nothing
    try:
        assert not other.is_pool_host  # there, Job.wait polls
        JobStore(other if where == "in another process" else host).cancel(queued.id)
        assert woken.wait(20), "the waiter was not woken by the cancel"
        assert queued.status is JobStatus.CANCELLED
    finally:
        gate.touch()
        waiter.join(30)
        other.close()
    assert running.result(timeout=30) == "done"


def test_a_waiter_in_the_host_sees_the_end_before_the_worker_is_done(tmp_path: Path) -> None:
    """A worker reports "done" after the job's end signals; a slow receiver there must not hold
    back a waiter in the host, which reads the stored end meanwhile."""
    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    release = tmp_path / "release"
    try:
        with make_app(host).app_context():
            job = jobs.slow_to_report.submit(str(release))
            assert job.result(timeout=20) == str(release)  # while the receiver still holds the worker
            assert not release.exists()
    finally:
        release.touch()
        host.close()


def test_a_wait_keeps_its_timeout_while_the_dispatcher_is_busy(
    gated: tuple[DiskcacheBackend, t.Any, Path], pools: list[PoolHost], no_recheck: None
) -> None:
    host, job, gate = gated
    [pool] = pools
    held, release = threading.Event(), threading.Event()

    def busy_dispatcher() -> None:  # holds the mutex as a long sweep would
        with pool.mutex:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=busy_dispatcher)
    holder.start()
    try:
        assert held.wait(30)
        started = time.monotonic()
        assert look(host, job.id, 0.1)[0]["status"] == JobStatus.QUEUED.value  # (claimed: it runs)
        assert time.monotonic() - started < 10  # not until the mutex is free (30 s)
    finally:
        release.set()
        holder.join(30)
        gate.touch()
    assert job.result(timeout=30) == "done"


def test_the_pool_serves_a_web_process_with_over_1024_descriptors(tmp_path: Path, pools: list[PoolHost]) -> None:
    """The workers' pipes then get descriptors past select()'s limit."""
    import resource

    from tests import diskcache_jobs as jobs

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    import gc

    gc.collect()  # earlier tests' unreachable pipes: collected later, they would free descriptors below
    filler = [os.open(os.devnull, os.O_RDONLY)]
    while filler[-1] < 1100:  # every free descriptor below, too
        filler.append(os.open(os.devnull, os.O_RDONLY))
    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            submitted = [jobs.add.submit(n, 1) for n in range(3)]  # nobody waits in this process
            wait_for(lambda: all(job.status is JobStatus.SUCCEEDED for job in submitted), 30, "every job to run")
            [pool] = pools
            assert min(worker.conn.fileno() for worker in pool.workers) >= 1024
    finally:
        host.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_pool_works_without_epoll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no epoll (not Linux), the dispatcher polls and waiters wait to be woken."""
    from tests import diskcache_jobs as jobs

    monkeypatch.setattr(pool_module, "EPOLL", False)
    epolls: list[t.Any] = []  # (the pool's module's select, with its epoll spied)
    spied_select = types.SimpleNamespace(**{name: getattr(select, name) for name in dir(select) if name[0] != "_"})
    spied_select.epoll = lambda *args: epolls.append(args) or select.epoll(*args)
    monkeypatch.setattr(pool_module, "select", spied_select)
    watched = spy(monkeypatch, PoolHost, "unwatch", lambda pool, worker: worker)  # once a waiter read a pipe
    host = DiskcacheBackend(tmp_path / "pool", workers=2, max_workers=2)
    try:
        with make_app(host).app_context():
            assert [jobs.add.submit(n, 1).result(timeout=30) for n in range(5)] == [1, 2, 3, 4, 5]
            assert epolls == [] and watched == []
    finally:
        host.close()


def test_closing_the_host_with_a_job_running_leaves_no_descriptor_open(
    gated: tuple[DiskcacheBackend, t.Any, Path], tmp_path: Path
) -> None:
    host, job, _ = gated
    host.close()
    assert job.status is JobStatus.FAILED
    fifo = str(tmp_path / "pool" / "pool.fifo")
    assert [fd for fd in os.listdir("/proc/self/fd") if _target(fd) == fifo] == []


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_running_job_is_its_claim_and_heartbeat_until_it_ends(gated: tuple[DiskcacheBackend, t.Any, Path]) -> None:
    host, job, gate = gated
    claim = host.get(keys.claim(job.id))
    assert job.started_at is not None and job.started_at.timestamp() == pytest.approx(claim["at"])
    # The worker's ticker beats one interval after the claim; the record waits for the end.
    wait_for(lambda: host.get(keys.alive(job.id)) is not MISSING, 30, "the first heartbeat")
    assert host.get(keys.job(job.id))["status"] == "queued"
    gate.touch()
    assert job.wait(timeout=30) is JobStatus.SUCCEEDED
    final = host.get(keys.job(job.id))
    assert final["status"] == "succeeded" and final["started"] == claim["at"]


def test_rolled_back_batches_leave_no_files(backend: DiskcacheBackend, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), backend.batch():
        backend.set("request:big", BIG)
        raise RuntimeError("the step fails after writing a large value")
    assert backend.get("request:big") is MISSING
    assert value_files(tmp_path / "lt") == set()
    # The same for a job's end that cannot be committed.
    writes = [("set", "result:big", BIG, None)]
    with pytest.raises(ZeroDivisionError):
        backend.add_then_write("end:big", 1, None, writes, unless=1 / 0)  # type: ignore[arg-type]
    assert value_files(tmp_path / "lt") == set()


def test_threads_release_their_connections(backend: DiskcacheBackend) -> None:
    backend.set("job:warm", 0)

    def read() -> None:
        assert backend.get("job:warm") == 0

    threads = [threading.Thread(target=read) for _ in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # Each ended thread's connection and lock file were closed with it.
    wait_for(lambda: len(backend.table._threads) <= 2, 10, "the threads' connections to be released")


_HOLD_AND_FORK = """
import os, signal, sys, time
from flask_longtask.backends.diskcache import DiskcacheBackend
backend = DiskcacheBackend(sys.argv[1], embedded=False)
with backend.batch():
    backend.set("job:x", 1)  # holds the writers' lock from here
    if os.fork() == 0:  # a process the job forks (multiprocessing): it outlives us
        time.sleep(60)
        os._exit(0)
    print("holding", flush=True)
    time.sleep(60)  # killed here, the lock still held
"""


def test_a_forked_child_does_not_keep_a_dead_writers_lock(backend: DiskcacheBackend, tmp_path: Path) -> None:
    """A writer killed while it holds the lock releases it, even if a process it forked lives on."""
    import signal
    import subprocess
    import sys

    backend.set("job:warm", 0)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_FORK, str(tmp_path / "lt")], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"holding\n"
        proc.kill()  # the writer dies holding the lock; its forked child is still running
        proc.wait(10)
        done = threading.Event()
        threading.Thread(target=lambda: (backend.set("job:y", 2), done.set()), daemon=True).start()
        assert done.wait(30), "a write waited for a lock held by nobody alive"
        assert backend.get("job:y") == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the forked child, in the same session
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait(10)


_EXIT_WITH_A_JOB_RUNNING = """
import sys
from flask import Flask
from flask_longtask.backends.diskcache import DiskcacheBackend
from tests import diskcache_jobs as jobs
from tests.helpers import wait_for

app = Flask("exit_test")
jobs.longtask.init_app(app, backend=DiskcacheBackend(sys.argv[1], workers=1, max_workers=1))
with app.app_context():
    job = jobs.wait_for_file.submit(sys.argv[2])
    wait_for(lambda: job.status.value == "running", 30, "the job to start")
    print(job.id, flush=True)
sys.exit(0)  # a normal exit, the pool hosted here and the job still running
"""


def test_a_normal_exit_of_the_host_process_ends_its_running_jobs(tmp_path: Path) -> None:
    import subprocess
    import sys

    directory = tmp_path / "lt"
    done = subprocess.run(
        # A connection left open at exit is an error, printed ("Exception ignored ... ResourceWarning").
        [
            sys.executable,
            "-W",
            "error::ResourceWarning",
            "-c",
            _EXIT_WITH_A_JOB_RUNNING,
            str(directory),
            str(tmp_path / "never"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
    job_id = done.stdout.split()[-1]
    reader = DiskcacheBackend(directory, embedded=False)
    try:
        record = reader.get(keys.job(job_id))
        assert record["status"] == "failed"
        assert "the worker pool was shut down while it ran" in record["error"]["message"]
    finally:
        reader.close()


def test_a_job_its_worker_never_claimed_runs_on_another(tmp_path: Path) -> None:
    """A worker killed after the pool handed it a job, before it claimed it: the job never
    started, so it is not failed; the pool gives it to the replacement worker. (A job submitted
    from another process goes through the pool host's queue; the worker claims it itself.)"""
    import signal

    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    client = DiskcacheBackend(tmp_path / "pool", embedded=False)  # as in another web process
    try:
        with make_app(host).app_context():
            assert jobs.add.submit(1, 1).result(timeout=30) == 2  # the pool and its one worker run
        [worker] = host_pids(host)
        # (a result can be read before the pool has heard from its worker that it is free;
        # stopped before it says so, the worker would never be handed the next job)
        idle_worker(host)
        os.kill(worker, signal.SIGSTOP)  # it will not read its pipe
        with make_app(client).app_context():
            job = jobs.add.submit(2, 3)  # through the FIFO, handed to the stopped worker
            wait_for(lambda: the_worker(host).job_id == job.id, 10, "the job to be handed to the worker")
            assert client.get(keys.claim(job.id)) is MISSING
            assert job.status is JobStatus.QUEUED
            os.kill(worker, signal.SIGKILL)
            assert job.result(timeout=30) == 5
            assert worker not in host_pids(host)  # replaced
    finally:
        client.close()
        host.close()


def test_a_job_submitted_in_the_host_is_claimed_for_an_idle_worker(tmp_path: Path) -> None:
    """In the process hosting the pool, a job for an idle worker is written with that worker's
    claim (it reads "running" at once, and the worker runs it without a write of its own). If
    that worker dies before it reads its pipe, the job, possibly started, ends failed as lost
    (never run twice, never left running); the next job runs on the replacement."""
    import signal

    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    try:
        with make_app(host).app_context():
            assert jobs.add.submit(1, 1).result(timeout=30) == 2
            [worker] = host_pids(host)
            # (a result can be read before the pool has heard from its worker that it is free)
            idle_worker(host)
            job = jobs.add.submit(2, 2)
            assert host.get(keys.claim(job.id))["by"].endswith(f":{worker}:0")
            assert job.result(timeout=30) == 4
            big = "x" * (300 * 1024)  # arguments over 32 KiB: the worker reads them from storage
            idle_worker(host)
            assert jobs.echo.submit(big).result(timeout=30) == big

            idle_worker(host)
            os.kill(worker, signal.SIGSTOP)
            stopped = jobs.add.submit(3, 3)
            assert stopped.status is JobStatus.RUNNING  # claimed for the stopped worker
            os.kill(worker, signal.SIGKILL)
            assert stopped.wait(timeout=30) is JobStatus.FAILED
            assert "killed by SIGKILL" in stopped.error["message"]
            assert jobs.add.submit(4, 4).result(timeout=30) == 8
    finally:
        host.close()


def test_a_job_whose_records_fail_to_be_stored_after_the_hand_over_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker is handed its job while the job's records are written (its wake-up overlaps the
    commit) and starts it only on the host's "go": if the write fails, the submit raises,
    nothing ran, nothing is stored, and the worker serves the next job."""
    import errno

    from tests import diskcache_jobs as jobs

    host = DiskcacheBackend(tmp_path / "pool", workers=1, max_workers=1)
    log = tmp_path / "log"
    try:
        with make_app(host).app_context():
            assert jobs.add.submit(1, 1).result(timeout=30) == 2
            idle_worker(host)
            handed: list[bool] = []
            hand_over = handoff.hand_over
            monkeypatch.setattr(handoff, "hand_over", lambda *args: handed.append(hand_over(*args)) or handed[-1])
            write_all = host.table.write_all

            def disk_full_once_locked(writes: t.Any, *, locked: t.Any = None, **more: t.Any) -> None:
                def then_fail() -> None:  # the transaction holds the writers' lock; then its write fails
                    if locked is not None:
                        locked()
                    raise OSError(errno.ENOSPC, "No space left on device")

                write_all(writes, locked=then_fail, **more)

            monkeypatch.setattr(host.table, "write_all", disk_full_once_locked)
            with pytest.raises(OSError, match="No space left"):
                jobs.record.submit(str(log), 1)
            monkeypatch.undo()
            assert handed == [True]  # the worker had the job before the write failed
            assert jobs.record.submit(str(log), 2).result(timeout=30) == 4
            assert [line.split()[:2] for line in log.read_text().splitlines()] == [["start", "2"], ["end", "2"]]
            assert len(list(host.scan(keys.JOB_PREFIX))) == 2  # the add and the second record only
    finally:
        host.close()
