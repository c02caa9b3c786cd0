"""Drive a Dash app's ``/_dash-update-component`` over real HTTP, exactly as dash-renderer does.

A background callback is one POST with the inputs (answered with signed ``cacheKey`` and ``job``
handles), then polls -- the same POST with the input values nulled and ``cacheKey``, ``job``
and the page's ``endId`` in the query string -- until an answer carries ``response`` (the
outputs), or is a 204 (nothing to update: a cancelled job), or an error.
"""

from __future__ import annotations

import json
import re
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field


@dataclass
class Poll:
    """One answer to a poll."""

    status: int
    body: dict[str, t.Any] = field(default_factory=dict)

    @property
    def progress(self) -> dict[str, t.Any] | None:
        return self.body.get("progress")

    @property
    def side_update(self) -> dict[str, t.Any] | None:
        return self.body.get("sideUpdate")

    @property
    def response(self) -> dict[str, t.Any] | None:
        return self.body.get("response")

    @property
    def is_final(self) -> bool:
        return self.status != 200 or "response" in self.body


def dep(component: str, prop: str, value: t.Any = None) -> dict[str, t.Any]:
    return {"id": component, "property": prop, "value": value}


@dataclass
class Callback:
    """One background callback of the page: what the renderer sends for it."""

    output: str  # the callback id, e.g. "out.children" or "..a.children...b.value.."
    outputs: t.Any  # one {"id", "property"} or a list of them
    inputs: list[dict[str, t.Any]]
    state: list[dict[str, t.Any]] = field(default_factory=list)


class DashPage:
    """One page load: its ``endId``, and the callbacks it fires and polls."""

    def __init__(self, base_url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}  # sent with each callback request (a Cookie, say)
        with urllib.request.urlopen(self.base_url + "/", timeout=timeout) as response:
            html = response.read().decode()
        config = re.search(
            r'<script id="_dash-config" type="application/json">(.*?)</script>',
            html,
            re.DOTALL,
        )
        assert config is not None, "no _dash-config in the page"
        self.end_id: str = json.loads(config.group(1))["end_id"]

    def post(self, body: dict[str, t.Any], **query: str | list[str]) -> Poll:
        args: list[tuple[str, str]] = [("endId", self.end_id)]
        for name, value in query.items():
            args.extend((name, v) for v in (value if isinstance(value, list) else [value]))
        url = f"{self.base_url}/_dash-update-component?{urllib.parse.urlencode(args)}"
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self.headers},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
                return Poll(response.status, json.loads(data) if data else {})
        except urllib.error.HTTPError as err:
            data = err.read()
            try:
                body_json = json.loads(data)
            except ValueError:
                body_json = {"text": data.decode(errors="replace")}
            return Poll(err.code, body_json)

    def body(self, callback: Callback, *, nulled: bool = False) -> dict[str, t.Any]:
        inputs = [dict(d, value=None) if nulled else d for d in callback.inputs]
        state = [dict(d, value=None) if nulled else d for d in callback.state]
        return {
            "output": callback.output,
            "outputs": callback.outputs,
            "inputs": inputs,
            "state": state,
            "changedPropIds": [f"{d['id']}.{d['property']}" for d in callback.inputs[:1]],
        }

    def start(self, callback: Callback, **query: str | list[str]) -> Job:
        """Fire ``callback``: the first request, which starts (or joins) the job."""
        answer = self.post(self.body(callback), **query)
        assert answer.status == 200 and "cacheKey" in answer.body, f"not a background callback: {answer}"
        return Job(self, callback, answer.body)


class Job:
    """A started background callback, polled as the renderer polls it."""

    def __init__(self, page: DashPage, callback: Callback, handles: dict[str, t.Any]) -> None:
        self.page = page
        self.callback = callback
        self.handles = handles
        self.polls: list[Poll] = []

    @property
    def job(self) -> str:
        return t.cast(str, self.handles["job"])

    @property
    def job_id(self) -> str:
        """The unsigned job id inside the signed handle."""
        return self.job.rpartition("~")[0]

    def poll(self) -> Poll:
        body = self.page.body(self.callback, nulled=True)
        answer = self.page.post(body, cacheKey=self.handles["cacheKey"], job=self.job)
        self.polls.append(answer)
        return answer

    def run(self, interval: float = 0.05, timeout: float = 30.0) -> Poll:
        """Poll every ``interval`` seconds until the final answer; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.poll()
            if answer.is_final:
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"job {self.job_id} still running after {timeout}s: {answer}")
            time.sleep(interval)
