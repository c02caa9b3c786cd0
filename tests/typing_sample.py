"""Checked by mypy in tests/test_typing.py (never imported): Task keeps the function's types."""

from __future__ import annotations

from flask_longtask import Job, LongTask

longtask = LongTask()


@longtask.task
def crunch(n: int, label: str = "x") -> list[int]:
    return [n]


@longtask.task(cache_by=[], expire=5)
def memo(n: int) -> float:
    return n / 2


job: Job[list[int]] = crunch.submit(3, label="y")
numbers: list[int] = job.result(timeout=1)
half: float = memo.submit(4).result()
inline: list[int] = crunch(1)

crunch.submit("three")  # error: wrong argument type
crunch.submit(3, colour="red")  # error: unknown keyword
text: str = memo.submit(1).result()  # error: the result is a float


@longtask.task
async def fetch(url: str) -> bytes:
    return url.encode()


@longtask.task(retries=1)
async def fetch_size(url: str) -> int:
    return len(url)


body: bytes = fetch.submit("u").result()  # a coroutine task's jobs return what it returns
size: int = fetch_size.submit("u").result()
inline_body: bytes = fetch("u")
wrong: str = fetch.submit("u").result()  # error: the result is bytes
