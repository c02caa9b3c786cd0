"""Dash background callbacks: LongTaskManager (diskcache backend) against Dash's DiskcacheManager.

The same Dash app runs on each manager, served by Dash's default (threaded) development server
in its own process, and is driven over HTTP exactly as dash-renderer drives it (one request
that starts the job, then polls with the signed ``cacheKey``/``job`` handles). Printed:

* time to result of a 0.5 s job, polled every 50 ms and every 1000 ms (median of 5);
* 20 and 200 concurrent callbacks (distinct inputs): how many completed, how many hung
  (no answer within 60 s), wall time, peak number of processes and peak memory (RSS of the
  server's whole process tree);
* 20 concurrent requests with identical inputs (20 tabs): how many got the result, how
  many an empty 204, and how often the work ran.

Run from the repository root (Dash's DiskcacheManager needs ``psutil``)::

    PYTHONPATH=. python benchmarks/bench_dash.py [--quick]

The file is also the app: ``--serve`` runs it (used by the benchmark itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MANAGER = os.environ.get("BENCH_MANAGER", "longtask")
RUN_LOG = os.environ.get("BENCH_RUN_LOG", os.devnull)

if os.environ.get("BENCH_SERVE") == "1":  # the app, in the server process (and its workers)
    from dash import Dash, Input, Output, dcc, html

    if MANAGER == "longtask":
        from dash_adapter import LongTaskManager
        from flask_longtask import LongTask

        longtask = LongTask()
        # single_flight: the recorded table's run shared a job among equal requests (the
        # default then; now, as on Dash, each request runs its own job unless it opts in).
        manager: t.Any = LongTaskManager(longtask, single_flight=True)
    else:
        import diskcache
        from dash import DiskcacheManager

        manager = DiskcacheManager(diskcache.Cache(os.environ["BENCH_CACHE_DIR"]))

    app = Dash(__name__, background_callback_manager=manager)
    app.server.config.from_prefixed_env()
    if MANAGER == "longtask":
        longtask.init_app(app.server)
    app.layout = html.Div([dcc.Store(id="in"), html.Div(id="out"), html.Div(id="bar")])

    @app.callback(
        Output("out", "children"),
        Input("in", "data"),
        background=True,
        progress=Output("bar", "children"),
        prevent_initial_call=True,
    )
    def work(set_progress: t.Callable[[t.Any], None], spec: dict[str, t.Any]) -> str:
        with open(RUN_LOG, "a") as log:
            log.write(spec["tag"] + "\n")
        for i in range(spec.get("steps", 0)):
            time.sleep(spec["step"])
            set_progress(i + 1)
        time.sleep(spec.get("sleep", 0))
        return f"done {spec['tag']}"


def _serve(port: int) -> None:
    app.run(port=port, debug=False)


# -- the driver ---------------------------------------------------------------------------------


class Server:
    def __init__(self, manager: str, tmp: Path) -> None:
        import psutil

        from tests.browser import free_port

        self.manager = manager
        self.port = free_port()
        self.run_log = tmp / f"{manager}-runs.log"
        env = {
            **os.environ,
            "BENCH_SERVE": "1",
            "BENCH_MANAGER": manager,
            "BENCH_RUN_LOG": str(self.run_log),
            "BENCH_CACHE_DIR": str(tmp / f"{manager}-dash-cache"),
            "FLASK_LONGTASK_BACKEND": "diskcache",
            "FLASK_LONGTASK_DISKCACHE_DIR": str(tmp / f"{manager}-longtask"),
            "PYTHONPATH": str(ROOT),
        }
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.page()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def page(self) -> t.Any:
        from tests.dash_apps.client import DashPage

        return DashPage(self.url, timeout=60)

    def runs(self, tag: str) -> int:
        return self.run_log.read_text().split().count(tag) if self.run_log.exists() else 0

    def tree(self) -> tuple[int, int]:
        """(processes, total RSS in bytes) of the server and all its descendants."""
        import psutil

        procs = [self.ps]
        try:
            procs += self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        rss = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return len(procs), rss

    def close(self) -> None:
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def callback(spec: dict[str, t.Any]) -> t.Any:
    from tests.dash_apps.client import Callback, dep

    return Callback("out.children", dep("out", "children"), [dep("in", "data", spec)])


def run_one(server: Server, spec: dict[str, t.Any], interval: float, timeout: float = 60) -> t.Any:
    job = server.page().start(callback(spec))
    try:
        return job.run(interval=interval, timeout=timeout)
    except AssertionError:
        return None  # hung


class Sampler:
    """Peak processes and RSS of the server's tree while a block runs."""

    def __init__(self, server: Server) -> None:
        self.server, self.procs, self.rss = server, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            procs, rss = self.server.tree()
            self.procs, self.rss = max(self.procs, procs), max(self.rss, rss)
            time.sleep(0.05)

    def __enter__(self) -> t.Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench(manager: str, tmp: Path, quick: bool) -> dict[str, str]:
    row: dict[str, str] = {}
    server = Server(manager, tmp)
    try:
        run_one(server, {"tag": "warm-up", "sleep": 0.0}, 0.05)  # pool start-up is not measured
        for interval in (0.05, 1.0):
            times = []
            for _ in range(3 if quick else 5):
                started = time.monotonic()
                answer = run_one(server, {"tag": uuid.uuid4().hex, "sleep": 0.5}, interval)
                assert answer is not None and answer.response, answer
                times.append(time.monotonic() - started)
            row[f"0.5 s job, result after (interval {interval * 1000:g} ms)"] = f"{statistics.median(times):.2f} s"
        for count in (20,) if quick else (20, 200):
            tags = [uuid.uuid4().hex for _ in range(count)]
            with (
                Sampler(server) as sampler,
                ThreadPoolExecutor(min(count, 100)) as pool,
            ):
                started = time.monotonic()
                answers = list(
                    pool.map(
                        lambda tag: run_one(server, {"tag": tag, "sleep": 0.2}, 0.2),
                        tags,
                    )
                )
                wall = time.monotonic() - started
            done = sum(1 for a in answers if a is not None and a.response is not None)
            hung = sum(1 for a in answers if a is None)
            row[f"{count} concurrent: completed / hung / other"] = f"{done} / {hung} / {count - done - hung}"
            row[f"{count} concurrent: wall time"] = f"{wall:.1f} s"
            row[f"{count} concurrent: peak processes"] = str(sampler.procs)
            row[f"{count} concurrent: peak RSS (tree)"] = f"{sampler.rss / 2**20:.0f} MiB"
        tag = uuid.uuid4().hex

        def tab(_: int) -> t.Any:
            return run_one(server, {"tag": tag, "sleep": 0.5}, 0.1)

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(tab, range(20)))
        got = sum(1 for a in answers if a is not None and a.response)
        empty = sum(1 for a in answers if a is not None and a.status == 204)
        row["20 identical requests: result / 204"] = f"{got} / {empty}"
        row["20 identical requests: work ran"] = f"{server.runs(tag)} time(s)"
    finally:
        server.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 200-callback run")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        _serve(options.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: bench(name, Path(tmp), options.quick) for name in ("longtask", "dash")}
    print("| measure | LongTaskManager (diskcache backend) | Dash DiskcacheManager |")
    print("| --- | --- | --- |")
    for key in rows["longtask"]:
        print(f"| {key} | {rows['longtask'][key]} | {rows['dash'].get(key, '-')} |")


if __name__ == "__main__":
    main()
