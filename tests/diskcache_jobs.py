"""Module-level tasks for the DiskcacheBackend tests: worker processes import them by name."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import signal
import time
import typing as t

from flask import Flask, current_app

from flask_longtask import LongTask, TimeLimitExceeded, current_job, signals
from flask_longtask.backends import ThreadBackend
from tests.helpers import log_retrying, retrying_log

if t.TYPE_CHECKING:
    from flask_longtask.backends.diskcache.child import Child

longtask = LongTask()

# The app jobs run in inside a worker process. Tests register the same ``longtask`` on their own
# app with a DiskcacheBackend; workers only need an app to enter, and store through their own.
app = Flask(__name__)
longtask.init_app(app, backend=ThreadBackend(workers=1))


@longtask.task
def add(a: int, b: int) -> int:
    return a + b


@longtask.task
def noop() -> None:
    return None


@longtask.task
def whoami() -> dict[str, int]:
    return {"pid": os.getpid(), "ppid": os.getppid()}


@longtask.task
def record(log: str, n: int, duration: float = 0.0) -> int:
    """Append "start"/"end" lines (pid, time) to ``log``: proves exactly-once and concurrency."""
    with open(log, "a") as f:
        f.write(f"start {n} {os.getpid()} {time.time()}\n")
    if duration:
        time.sleep(duration)
    with open(log, "a") as f:
        f.write(f"end {n} {os.getpid()} {time.time()}\n")
    return n * 2


@longtask.task
def stubborn(pid_file: str) -> str:
    """Never checks the cancel flag: only killing its process stops it."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)


@longtask.task
def exit_now(code: int) -> None:
    os._exit(code)


@longtask.task
def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


@longtask.task
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@longtask.task
def count_progress(n: int) -> int:
    for i in range(n):
        current_job.set_progress(i)
    return n


@longtask.task
def wait_for_file(path: str, timeout: float = 60.0, then: t.Any = "done", fail: str | None = None) -> t.Any:
    """Run until the test creates ``path`` (the job's own work: a poll with a deadline), then
    return ``then``, or raise ``fail``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    if fail is not None:
        raise ValueError(fail)
    return then


@longtask.task
def cooperative() -> str:
    while not current_job.is_cancel_requested:
        time.sleep(0.01)
    return "stopped"


@longtask.task
def unpicklable_result() -> t.Any:
    return (i for i in range(3))  # neither pickle nor dill can carry a generator


@longtask.task
def fill_disk() -> str:
    """From here on every file write of this process fails (EFBIG), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return "done"


@longtask.task
def echo_under_umask(value: t.Any, umask: int) -> t.Any:
    """Sets its process's umask (the loosest: 0), then returns ``value`` (written by this worker)."""
    os.umask(umask)
    return value


@longtask.task
def echo(value: t.Any) -> t.Any:
    return value


def _explode() -> None:
    raise RuntimeError("this argument only unpickles in the process that made it")


class Poison:
    """Pickles fine; unpickling it in a worker process raises."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (_check_pid, (self.pid,))


def _check_pid(pid: int) -> Poison:
    if os.getpid() != pid:
        _explode()
    p = Poison.__new__(Poison)
    p.pid = pid
    return p


SIGKILL = int(signal.SIGKILL)


@longtask.task
def slow_to_report(path: str, ahead: int = 0, teardown: bool = False) -> str:
    """Returns at once (once ``ahead`` jobs were sent ahead to its worker); a receiver of its end
    signal (or with ``teardown``, a teardown function of the app), added in its worker until
    then, takes until ``path`` exists."""
    _held_ahead(ahead, None)
    if teardown:
        app = current_app._get_current_object()

        def slow_teardown(exc: BaseException | None) -> None:
            app.teardown_appcontext_funcs.remove(slow_teardown)
            _wait_for_path(path)

        app.teardown_appcontext(slow_teardown)
    else:
        signals.job_succeeded.connect(_slow_receiver)
    return path


def _slow_receiver(sender: t.Any, job: t.Any, **kwargs: t.Any) -> None:
    signals.job_succeeded.disconnect(_slow_receiver)
    _wait_for_path(job.result())


def _wait_for_path(path: str) -> None:
    deadline = time.monotonic() + 30  # user code that holds the worker after the end is stored
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def _held_ahead(count: int, gate: str | None, until_cancelled: bool = False) -> None:
    """In a pool worker: wait until the pool has sent ``count`` jobs ahead to this worker, which
    keeps them meanwhile (holding its pipe's lock: no hand-back), then until ``gate`` exists,
    then (``until_cancelled``) until the job has seen its cancellation."""
    me = _worker()
    with me.pipe_lock:
        deadline = time.monotonic() + 30  # the job's own work: a poll with a deadline
        while count and me.sent_ahead() < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the pool sent no jobs ahead")
            time.sleep(0.01)
        while gate is not None and not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} never appeared")
            time.sleep(0.01)
        while until_cancelled and not current_job.is_cancel_requested:
            if time.monotonic() > deadline:
                raise TimeoutError("the job was never cancelled")
            time.sleep(0.01)


def _worker() -> Child:
    """This pool worker process's state."""
    from flask_longtask.backends.diskcache import child

    me = child.current()
    if me is None:
        raise RuntimeError("this job runs only in a pool worker of DiskcacheBackend")
    return me


@longtask.task
def hold_jobs_ahead(
    count: int, gate: str | None = None, exit_code: int | None = None, until_cancelled: bool = False
) -> int:
    """Runs until ``count`` jobs were sent ahead to its worker (and ``gate`` exists, and it has
    seen its cancellation); then returns, or ends its process with ``exit_code``."""
    _held_ahead(count, gate, until_cancelled)
    if exit_code is not None:
        os._exit(exit_code)
    return count


@longtask.task
def exit_after_its_end(count: int, report: str) -> int:
    """Returns once ``count`` jobs were sent ahead to its worker; its worker then ends its
    process once the end is stored and the first job sent ahead claimed with it, before it
    reports either. Writes to ``report`` that job's id and whether the claim was made."""
    me = _worker()
    me.hand_back_after = float("inf")  # (however long this takes: the worker exits)
    _held_ahead(count, None)
    take_next = me.take_next

    def take_next_then_exit() -> t.Any:
        taken = take_next()
        with open(report, "w") as f:
            f.write("" if taken is None else f"{taken[0]} {taken[1].won}")
        os._exit(5)

    me.take_next = take_next_then_exit
    return count


@longtask.task
def until_cancelled(pid_file: str) -> str:
    """Writes its pid, then works until it sees its cancel flag (a time limit raises it too)."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not current_job.is_cancel_requested:
        if time.monotonic() > deadline:
            raise TimeoutError("the cancel flag never came")
        time.sleep(0.01)  # the job's work
    return "saw the flag"


@longtask.task(time_limit=math.inf)
def unlimited_work(seconds: float) -> float:
    """Works ``seconds``, whatever the app's ``LONGTASK_TIME_LIMIT``."""
    time.sleep(seconds)  # the job's work
    return seconds


def _count(counter: str) -> int:
    """Add one to the number in file ``counter`` (the attempts of a job) and return it."""
    try:
        with open(counter) as f:
            n = int(f.read() or 0) + 1
    except FileNotFoundError:
        n = 1
    with open(counter, "w") as f:
        f.write(str(n))
    return n


# Each job_retrying signal of a job that asked (flaky's ``retrying``), sent in this process.
signals.job_retrying.connect(log_retrying)


@longtask.task(retries=2, retry_backoff=0.05, retry_on=(ConnectionError,))
def flaky(counter: str, failures: int, error: str = "ConnectionError", retrying: str | None = None) -> int:
    """Fails its first ``failures`` attempts with ``error`` (a builtin's name), then returns
    the attempt's number. ``retrying``: a file its job_retrying signals are written to."""
    retrying_log(current_job.id, retrying)
    n = _count(counter)
    if n <= failures:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[error](f"attempt {n} fails")
    return n


@longtask.task(retries=1, retry_backoff=1.0, cache_by=[])
def flaky_slowly(counter: str) -> int:
    """Fails its first attempt, then is retried after about a second (memoized)."""
    n = _count(counter)
    if n == 1:
        raise ConnectionError("the first attempt fails")
    return n


@longtask.task(time_limit=0.3, retries=1, retry_backoff=0.05, retry_on=(ConnectionError, TimeLimitExceeded))
def slow_then_quick(counter: str, stubborn: bool, second: float = 0.0) -> int:
    """Its first attempt runs past its time limit (waiting for the flag, or, ``stubborn``,
    ignoring it until stopped by force); the second works ``second`` seconds and returns."""
    n = _count(counter)
    deadline = time.monotonic() + 60
    while n == 1 and (stubborn or not current_job.is_cancel_requested) and time.monotonic() < deadline:
        time.sleep(0.01)  # the job's work
    if n > 1:
        time.sleep(second)  # the job's work
    return n


@longtask.task(time_limit=0.3, retries=1, retry_backoff=0.05)
def slow_once(counter: str) -> int:
    """Runs past its time limit (until flagged); its task retries on any Exception, which does
    not name TimeLimitExceeded: it is not retried."""
    n = _count(counter)
    deadline = time.monotonic() + 60
    while not current_job.is_cancel_requested and time.monotonic() < deadline:
        time.sleep(0.01)  # the job's work
    return n


@longtask.task
def nap(seconds: float) -> int:
    """Waits, as a job blocked in I/O does (the elastic pool grows for it); its worker's pid."""
    time.sleep(seconds)
    return os.getpid()


@longtask.task
def burn(seconds: float) -> int:
    """Burns ``seconds`` of its own CPU time, however crowded the machine (the elastic pool does
    not grow past the CPUs for it); its worker's pid."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(1000))
    return os.getpid()


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(1000))


#: A child process that burns ``sys.argv[1]`` seconds of its own CPU time.
_SPIN_CHILD = "import sys, time\nend = time.process_time() + float(sys.argv[1])\nwhile time.process_time() < end: pass"


@longtask.task
def burn_timed(seconds: float, where: str = "here") -> tuple[int, float, float]:
    """Burns ``seconds`` of CPU time: in its main thread (``"here"``), in a thread it waits for
    (``"thread"``) or in a child process it waits for (``"child"``). Its worker's pid, and when it
    started and ended (epoch): what ran at once is read from these."""
    import subprocess
    import sys
    import threading

    started = time.time()
    if where == "thread":
        burner = threading.Thread(target=_spin, args=(seconds,))
        burner.start()
        burner.join()
    elif where == "child":
        subprocess.run([sys.executable, "-I", "-c", _SPIN_CHILD, str(seconds)], check=True)
    else:
        _spin(seconds)
    return os.getpid(), started, time.time()


@longtask.task
def until_path(path: str) -> int:
    """Waits (sleeps) until ``path`` exists, however long other programs keep the machine busy
    meanwhile; its worker's pid."""
    deadline = time.monotonic() + 300
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@longtask.task
def ahead_while(seconds: float) -> int:
    """Waits ``seconds``, keeping the jobs sent ahead to its worker meanwhile (no hand-back): the
    most it saw waiting in its pipe."""
    me = _worker()
    most = 0
    with me.pipe_lock:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # the job's work: a wait, looking at its pipe
            most = max(most, me.sent_ahead())
            time.sleep(0.005)
    return most


@longtask.task
async def wait_file(gate: str, pid_file: str) -> int:
    """A coroutine job: writes its worker's pid to ``pid_file``, then awaits ``gate``."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(gate):
        await asyncio.sleep(0.005)
    return os.getpid()
