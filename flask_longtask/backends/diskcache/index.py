"""The listing index of :class:`~flask_longtask.backends.diskcache.DiskcacheBackend`: a table
of the same database, ``longtask_jobs``, one row per job
(:class:`~flask_longtask.backends.base.JobEntry`); and the metrics' tallies,
``longtask_tallies`` (:class:`~flask_longtask.backends.entry.Tally`).

Their rows change in the transactions that change the job's records, and only in those two: the
one that creates the job (:meth:`.table.Table.write_all` with ``entries=``: its records, and in
the pool's host the claim of the worker it is handed to) and the one that ends it
(:meth:`.table.Table.add_then_write` with ``ended=``: the end claim and the final records, to
which it adds the job's tally). Both add their statements to a transaction that exists anyway;
a job created alone is then written in a ``BEGIN``/``COMMIT`` rather than as one
self-committing statement. Nothing here reads a key: the core hands the entries over
(``NewJob.entry``, ``JobEnd.ended``).

Ids sort by submit time, so the primary key is the newest-first order: a page is one walk down
the key from ``before``, keeping the rows that match. There is no other index: each would be one
more page written by every job's creation and end (SQLite writes each page a commit changed),
and four of them (status, task, owner, expiry) cost a job 170 us where the table alone costs it
40 us (docs/performance.md). Without them a filter that few jobs match reads more rows: all of
them, at worst, 7 ms for 100,000 jobs (``benchmarks/bench_listing.py``).
"""

from __future__ import annotations

import time
import typing as t

from ..base import JobEntry, JobQuery
from ..entry import Tally, tally_of

if t.TYPE_CHECKING:  # pragma: no cover
    import sqlite3

    from .table import Table

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS longtask_jobs ("
    " id TEXT NOT NULL PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL, owner TEXT,"
    " created REAL NOT NULL, expire REAL"
    ") WITHOUT ROWID",
    # The metrics' tallies (see Backend.job_tallies): one row per task, status and duration
    # bucket (bound -1: no duration), added to by each job's end.
    "CREATE TABLE IF NOT EXISTS longtask_tallies ("
    " task TEXT NOT NULL, status TEXT NOT NULL, bound REAL NOT NULL,"
    " jobs INTEGER NOT NULL, seconds REAL NOT NULL, retries INTEGER NOT NULL,"
    " PRIMARY KEY (task, status, bound)"
    ") WITHOUT ROWID",
)
#: What a job's end adds to its tally.
TALLY = (
    "INSERT INTO longtask_tallies VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (task, status, bound)"
    " DO UPDATE SET jobs = jobs + 1, seconds = seconds + excluded.seconds, retries = retries + excluded.retries"
)
#: A job's entry, as it is created or as it ends (an end replaces what the creation wrote).
PUT = (
    "INSERT INTO longtask_jobs (id, task, status, owner, created, expire) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, expire = excluded.expire"
)
_LIVE = "(expire IS NULL OR expire > ?)"


def row(entry: JobEntry, now: float | None = None) -> tuple[t.Any, ...]:
    """The row of ``entry`` for :data:`PUT`; its expiry counted from ``now``."""
    expire = None if entry.expire is None else (time.time() if now is None else now) + entry.expire
    return (entry.id, entry.task, entry.status, entry.owner, entry.created, expire)


def tally_row(entry: JobEntry) -> tuple[t.Any, ...]:
    """The row a job's end adds to :data:`TALLY` (``entry`` as it ended)."""
    task, status, bound, seconds, retries = tally_of(entry)
    return (task, status, -1.0 if bound is None else bound, seconds, retries)


def tallies(table: Table) -> list[Tally]:
    rows = table._run("SELECT task, status, bound, jobs, seconds, retries FROM longtask_tallies").fetchall()
    return [
        Tally(task, status, None if bound < 0 else bound, jobs, seconds, retries)
        for task, status, bound, jobs, seconds, retries in rows
    ]


def query(table: Table, q: JobQuery) -> list[str]:
    """The ids of the live entries that match ``q``, newest first."""
    where: list[str] = [_LIVE]
    args: list[t.Any] = [time.time()]
    for column, value in (("status", q.status), ("task", q.task), ("owner", q.owner)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if q.since is not None:
        where += ["created >= ?", "id >= ?"]
        args += [q.since, q.lowest_id()]
    if q.before is not None:
        where.append("id < ?")
        args.append(q.before)
    sql = f"SELECT id FROM longtask_jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
    return [job_id for (job_id,) in table._run(sql, (*args, q.limit)).fetchall()]


#: The statuses an entry has (:class:`~flask_longtask.backends.base.JobEntry`).
STATUSES: t.Final = ("queued", "succeeded", "failed", "cancelled")
# One pass over the table (a GROUP BY on a column without an index would sort it: 4x slower).
_COUNTS = f"SELECT {', '.join(f'COALESCE(SUM(status = {s!r}), 0)' for s in STATUSES)} FROM longtask_jobs WHERE {_LIVE}"


def counts(table: Table) -> dict[str, int]:
    """Live entries per status."""
    row = table._run(_COUNTS, (time.time(),)).fetchone()
    return {status: int(n) for status, n in zip(STATUSES, row, strict=True) if n}


def forget(table: Table, job_id: str) -> None:
    table._write("DELETE FROM longtask_jobs WHERE id = ?", (job_id,))


def sweep(table: Table, now: float) -> int:
    """Delete the entries whose expiry has passed (the pool host's sweep); how many."""
    return table._write("DELETE FROM longtask_jobs WHERE expire <= ?", (now,))


def create(table: Table, con: sqlite3.Connection) -> None:
    """Make the index if the database has none: a directory written by an earlier build gets
    one, with an entry for each job it holds (read once, in the transaction that makes it)."""
    exists = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('longtask_jobs', 'longtask_tallies')"
    if con.execute(exists).fetchone()[0] == len(SCHEMA):
        return
    table._run("BEGIN IMMEDIATE", con=con)
    try:
        fill = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'longtask_jobs'").fetchone() is None
        for statement in SCHEMA:  # (another process may have made them meanwhile)
            con.execute(statement)
        if fill:
            rows = con.execute("SELECT id, expire, mode, filename, value FROM longtask WHERE kind = 'job:'").fetchall()
            entries = []
            for job_id, expire, mode, filename, value in rows:
                try:
                    record = table.disk.fetch(mode, filename, value, False)
                    entry = JobEntry.of({**record, "id": job_id})
                except Exception:  # (unreadable, tampered: left out, as a listing would)
                    continue
                entries.append((*row(entry)[:5], expire))
            con.executemany(PUT, entries)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
