"""``flask longtask ...``: run the worker pool, list, cancel and purge jobs."""

from __future__ import annotations

import os
import signal
import threading
import typing as t
from datetime import datetime

import click
from flask import current_app
from flask.cli import AppGroup

from . import listing
from .attempts import attempt_of, retries_of
from .exceptions import JobNotFoundError
from .job import JobStatus

if t.TYPE_CHECKING:  # pragma: no cover
    from .extension import _State

longtask_cli = AppGroup("longtask", help="Run the worker pool and manage Flask-LongTask jobs.")


def _state() -> _State:
    state = current_app.extensions.get("longtask")
    if state is None:
        raise click.ClickException("Flask-LongTask is not registered on this app: call 'LongTask(app)'.")
    return t.cast("_State", state)


def _quiet_backend() -> _State:
    # A command that only reads or cancels must not become the pool host (and kill jobs at exit).
    state = _state()
    if hasattr(state.backend, "embedded"):
        state.backend.embedded = False
    return state


@longtask_cli.command("worker")
@click.option("--workers", "-w", type=int, default=None, help="Workers kept warm (default: LONGTASK_WORKERS or CPUs).")
@click.option(
    "--max-workers",
    type=int,
    default=None,
    help="The pool's ceiling while jobs wait (default: LONGTASK_MAX_WORKERS or 4 per CPU; diskcache only).",
)
def worker_command(workers: int | None, max_workers: int | None) -> None:
    """Run the backend's workers in this process until interrupted.

    On diskcache: the worker pool, for deployments where web processes should not host it
    (LONGTASK_EMBEDDED_WORKER = False); if another process hosts it already, waits and takes
    over when it exits. On Celery: a Celery worker (prefork pool) for the app's tasks.
    """
    backend = _state().backend
    run_worker = getattr(backend, "run_worker", None)
    if run_worker is not None:  # a backend with workers of its own kind (Celery)
        if max_workers:
            raise click.UsageError(
                f"--max-workers sizes the diskcache backend's pool; {type(backend).__name__}'s workers"
                " size their own pool (Celery: run 'celery worker --autoscale=MAX,MIN')."
            )
        run_worker(workers or current_app.config.get("LONGTASK_WORKERS"))
        return
    run_pool = getattr(backend, "run_pool", None)
    if run_pool is None:
        raise click.ClickException(
            f"{type(backend).__name__} has no worker pool to run here: its jobs run in the web process itself."
        )
    if workers:
        backend.workers = workers  # type: ignore[attr-defined]
    if max_workers:
        backend.max_workers = max_workers  # type: ignore[attr-defined]

    def stop(signum: int, frame: t.Any) -> None:
        backend.stop_pool()  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)
    done = threading.Event()
    threading.Thread(target=_say_when_hosting, args=(backend, done), name="longtask-cli", daemon=True).start()
    try:
        run_pool()
    except KeyboardInterrupt:
        pass
    finally:
        done.set()
        backend.close()


def _say_when_hosting(backend: t.Any, done: threading.Event) -> None:
    """Say whether this process hosts the pool or stands by for another's, then when it takes over."""
    from .backends.diskcache.scripts import holder

    directory = str(getattr(backend, "directory", backend))
    held = holder(directory) if hasattr(backend, "directory") else None
    if held is not None and held[0] != os.getpid() and not backend.is_pool_host:
        script = f" (running {held[1]})" if held[1] else ""
        click.echo(
            f"Worker pool for {directory}: standing by for the pool held by pid {held[0]}{script};"
            " this process hosts it when that one exits."
        )
    waited = 0.0
    while not backend.is_pool_host:
        if done.wait(0.05 if waited < 1.0 else 0.25):
            return
        waited += 0.05
    click.echo(f"Worker pool for {directory}: hosting the pool (pid {os.getpid()}), {backend.pool_size()}.")


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: t.Any) -> str:
    """A time limit read from a record: ``"30s"``, or ``"-"`` for none (or anything else)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return f"{value:g}s"
    return "-"


def _attempts(record: dict[str, t.Any]) -> str:
    """``"2/4"``: the attempt that runs (or ran last) of those its task allows."""
    return f"{attempt_of(record)}/{1 + retries_of(record)}"


@longtask_cli.command("jobs")
@click.option("--status", "-s", type=click.Choice([s.value for s in JobStatus]), default=None)
@click.option("--task", "-t", default=None, help="Only the jobs of this task (its name).")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, listing.MAX_LIMIT),
    default=100,
    show_default=True,
    help="Show at most this many jobs.",
)
def jobs_command(status: str | None, task: str | None, limit: int) -> None:
    """List jobs with their status and progress, newest first."""
    state = _quiet_backend()
    store = state.store
    # One more than shown, to say whether there are more.
    query, wanted = listing.query(status=status, task=task, limit=min(limit + 1, listing.MAX_LIMIT))
    records = listing.find(store, query, wanted)  # "running" as soon as claimed, like Job.status
    more = len(records) > limit
    if not records:
        click.echo("No jobs.")
        return
    click.echo(f"{'ID':32}  {'STATUS':9}  {'CREATED':19}  {'TASK':30}  {'LIMIT':7}  {'ATTEMPT':7}  PROGRESS")
    for record in records[:limit]:
        try:
            progress = store.read_progress(record["id"])[1]
        except Exception:
            progress = "?"
        click.echo(
            f"{record['id']:32}  {record['status']:9}  {_when(record['created']):19}  {record['task'][:30]:30}  "
            f"{_seconds(record.get('time_limit')):7}  {_attempts(record):7}  {'' if progress is None else progress!r}"
        )
    if more:
        click.echo(f"(The newest {limit}; there are more: see --limit.)")


@longtask_cli.command("cancel")
@click.argument("job_id")
def cancel_command(job_id: str) -> None:
    """Cancel a job: a queued one never runs, a running one is stopped."""
    state = _quiet_backend()
    try:
        job = state.store.job(job_id)
        before = job.status
        job.cancel()
    except JobNotFoundError:
        raise click.ClickException(f"No job {job_id!r} (it may have expired).") from None
    if before.is_finished:
        click.echo(f"Job {job_id} had already ended: {before.value}.")
    else:
        click.echo(f"Cancellation requested for job {job_id} ({before.value}).")


@longtask_cli.command("purge")
def purge_command() -> None:
    """Delete every finished job (record, result, progress) and everything that has expired."""
    count = listing.purge(_quiet_backend().store)
    click.echo(f"Purged {count} finished job(s).")
