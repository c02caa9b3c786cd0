"""The pool's messages, queue and recent ends, through their own modules (no processes)."""

from __future__ import annotations

import binascii
import os
import threading
import time
from pathlib import Path

import pytest

from flask_longtask.backends.diskcache import fifo, jobqueue, waiting, wire
from flask_longtask.store import keys

ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "message",
    [
        wire.Run(ID),
        wire.Handover(ID, 12.5, {"id": ID, "status": "queued"}, {"args": b"\x80"}),
        wire.Handover(ID, 12.5, {"id": ID}, None),
        wire.Go(True),
        wire.Go(False),
    ],
)
def test_messages_to_a_worker_decode_as_they_were_sent(message: object) -> None:
    assert wire.decode_to_worker(message.encode()) == message  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "message",
    [
        wire.Done(ID),
        wire.Done(ID, {keys.job(ID): {"status": "succeeded"}, keys.result(ID): b"42"}, (ID[::-1], True)),
        wire.Done(ID, None, (ID[::-1], False)),
        wire.Done(ID, None, None, True),
        wire.GiveBack((ID, ID[::-1])),
        wire.Failing("the worker could not store the job's outcome: OSError: disk full"),
        wire.Draining(f"a coroutine job ({ID}) went on past its cancel's grace of 0.5 s"),
    ],
)
def test_messages_from_a_worker_decode_as_they_were_sent(message: object) -> None:
    assert wire.decode_from_worker(message.encode()) == message  # type: ignore[attr-defined]


def test_a_done_with_a_large_end_carries_the_job_id_alone() -> None:
    # A waiter then reads the result from storage; the pipe never carries megabytes.
    large = wire.Done(ID, {keys.result(ID): b"x" * wire.END_INLINE}, (ID[::-1], True))
    data = large.encode()
    assert len(data) < 1024
    assert wire.decode_from_worker(data) == wire.Done(ID, None, (ID[::-1], True))


def test_a_worker_message_that_cannot_be_read_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="could not be read"):
        wire.decode_from_worker(b"E not a pickle")
    with pytest.raises(ValueError, match="unknown message"):
        wire.decode_from_worker(b"Zzz")


@pytest.mark.parametrize(
    "message",
    [
        wire.Queued(ID),
        wire.Queued(ID, coroutine=True),  # (a coroutine job: for a worker of coroutine jobs)
        wire.Later(ID, 1700000000.5),
        wire.Later(ID, 1700000000.5, coroutine=True),
        wire.Kill(ID, 1700000000.25),
        wire.Ended(ID),
    ],
)
def test_fifo_lines_decode_as_they_were_sent(message: wire.Line) -> None:
    line = message.encode()
    assert line.endswith(b"\n") and len(line) < 512  # one atomic write to the FIFO (PIPE_BUF)
    assert wire.decode_line(line.rstrip(b"\n")) == message


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"q",
        b"q not-hex!",
        b"q " + b"a" * 65,
        b"q " + ID.encode() + b" extra",
        b"q " + ID.encode() + b" a a",
        b"k " + ID.encode() + b" 1700000000.5 a",  # (only queued jobs and retries say what they are)
        b"e " + ID.encode() + b" a",
        b"k " + ID.encode(),
        b"k " + ID.encode() + b" soon",
        b"k " + ID.encode() + b" nan",
        b"k " + ID.encode() + b" inf",
        b"l " + ID.encode(),
        b"l " + ID.encode() + b" -inf",
        b"l " + ID.encode() + b" later",
        b"x " + ID.encode(),
        b"\xff\xfe " + ID.encode(),
        b"s 12",
        b"s 0 " + binascii.hexlify(b'{"type": "E", "message": "m"}'),
        b"s -3 " + binascii.hexlify(b'{"type": "E", "message": "m"}'),
        b"s 12 not-hex",
        b"s 12 " + binascii.hexlify(b"not json"),
        b"s 12 " + binascii.hexlify(b'["E", "m"]'),
        b"s 12 " + binascii.hexlify(b'{"type": "E"}'),
        b"s 12 " + binascii.hexlify(b'{"type": 1, "message": "m"}'),
    ],
)
def test_fifo_lines_from_anyone_are_validated(line: bytes) -> None:
    # Any process that can write the directory can write the FIFO: what is not a message is None.
    assert wire.decode_line(line) is None


def test_a_start_failure_fits_one_atomic_write_whatever_its_message() -> None:
    """A worker that fails as it starts says why in one FIFO line (see .starting)."""
    short = wire.StartFailed(4242, {"type": "RuntimeError", "message": "An attempt has been made...\nnamed é"})
    assert wire.decode_line(short.encode().rstrip(b"\n")) == short
    long = wire.StartFailed(4242, {"type": "ValueError", "message": "é" * 5000})
    line = long.encode()
    assert line.endswith(b"\n") and len(line) <= wire.START_FAILED_MAX
    decoded = wire.decode_line(line.rstrip(b"\n"))
    assert isinstance(decoded, wire.StartFailed) and decoded.pid == 4242
    assert decoded.error["type"] == "ValueError" and decoded.error["message"].startswith("ééé")
    assert decoded.error["message"].endswith("…")


def test_frames_are_read_whole_and_in_order() -> None:
    import multiprocess

    host_end, worker_end = multiprocess.Pipe()
    try:
        frames = wire.Frames(host_end.fileno())
        for message in (wire.Done(ID), wire.GiveBack((ID,)), wire.Failing("gone")):
            worker_end.send_bytes(message.encode())
        received = [wire.decode_from_worker(frames.recv())]
        assert frames.has_message()  # the rest came with the first read
        received += [wire.decode_from_worker(frames.recv()) for _ in range(2)]
        assert received == [wire.Done(ID), wire.GiveBack((ID,)), wire.Failing("gone")]
        assert not frames.has_message()
        worker_end.close()
        with pytest.raises(EOFError):
            frames.recv()
    finally:
        host_end.close()
        worker_end.close()


def test_framed_size_is_what_a_pipe_holds() -> None:
    import multiprocess

    a, b = multiprocess.Pipe()
    try:
        a.send_bytes(wire.Run(ID).encode())
        assert len(os.read(b.fileno(), 1024)) == wire.framed_size(wire.Run(ID))
    finally:
        a.close()
        b.close()


def test_the_queue_puts_jobs_back_in_their_place() -> None:
    queue = jobqueue.JobQueue()
    for job_id in "abcde":
        assert queue.push(job_id)
    assert not queue.push("c")  # known already: a second message for it changes nothing
    taken = [queue.pop() for _ in range(3)]
    assert taken == ["a", "b", "c"]
    queue.requeue("c")
    queue.requeue("a")  # given back in another order: each goes back to its place
    assert [queue.pop() for _ in range(len(queue))] == ["a", "c", "d", "e"]
    assert "b" in queue  # taken, not done: still known
    queue.forget("b")
    assert "b" not in queue and queue.push("b")


def test_coroutine_jobs_wait_in_a_line_of_their_own() -> None:
    queue, later = jobqueue.JobQueue(), jobqueue.Delayed()
    queue.push("s1")
    queue.push("c1", coroutine=True)
    queue.push("c2", coroutine=True)
    assert (len(queue), queue.coroutines()) == (1, 2)  # len(): the other jobs' (the elastic pool's)
    assert queue.pop_coroutine() == "c1" and queue.pop() == "s1"
    queue.requeue("c1")  # given back: to its place in its own line
    assert [queue.pop_coroutine(), queue.pop_coroutine()] == ["c1", "c2"]
    assert queue.is_coroutine("c2") and not queue.is_coroutine("s1")
    queue.forget("c2")
    assert not queue.is_coroutine("c2")
    later.add("c2", 1.0, coroutine=True)
    assert later.take_due(2.0, queue) == ["c2"] and "c2" in later.coroutines


def test_a_waiter_is_woken_by_the_end_and_handed_what_it_wrote() -> None:
    ends = waiting.Ends()
    values = {keys.job(ID): {"status": "succeeded", "finished": time.time(), "expire": 60}}
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(ends.wait(ID, 30)))
    waiter.start()
    ends.add(ID, values, 100)
    ends.announce()
    waiter.join(10)
    assert not waiter.is_alive() and got == [values]
    assert got[0] is not values  # each waiter its own copy
    assert ends.tracks(ID, known=False)  # ended moments ago: a new wait needs no read


def test_recent_ends_are_bounded_by_their_size() -> None:
    ends = waiting.Ends()
    record = {"status": "succeeded", "finished": time.time(), "expire": 60}
    size = waiting.END_VALUES_BYTES // 4
    for n in range(8):
        job_id = f"{n:032x}"
        ends.add(job_id, {keys.job(job_id): record}, size)
    ends.announce()
    kept = [n for n in range(8) if ends.values(f"{n:032x}") is not None]
    assert kept == [4, 5, 6, 7]  # the newest, within END_VALUES_BYTES


def test_an_end_past_its_expiry_is_not_answered_from_memory() -> None:
    ends = waiting.Ends()
    ends.add(ID, {keys.job(ID): {"status": "succeeded", "finished": time.time() - 10, "expire": 5}}, 10)
    ends.announce()
    assert ends.tracks(ID, known=False) is False
    other = "f" * 32
    assert ends.tracks(other, known=True)  # queued here, not ended: its end will wake a waiter
    ends.add(other)
    ends.announce()
    assert not ends.tracks(other, known=True)  # ended without a worker's word: read first


def test_the_fifo_carries_lines_to_the_host_and_drops_what_is_not_a_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = fifo.FifoClient(str(tmp_path), lambda: pytest.fail("the FIFO has room"))
    assert not client.send(wire.Queued(ID))  # no host yet: nothing to do
    (tmp_path / fifo.FIFO_NAME).write_bytes(b"not a fifo")  # (a stray file: the host replaces it)
    reader = fifo.FifoReader(str(tmp_path))
    try:
        assert client.send(wire.Queued(ID)) and client.send(wire.Kill(ID, 5.0))
        with open(tmp_path / fifo.FIFO_NAME, "wb", buffering=0) as other:
            other.write(b"q not-hex!\nq " + ID.encode())  # a bad line, and half of a good one
            assert reader.read() == [wire.Queued(ID), wire.Kill(ID, 5.0)]
            assert "malformed" in caplog.text
            other.write(b"\n")
        assert reader.read() == [wire.Queued(ID)]  # whole once its end came
    finally:
        reader.close()
    assert not client.send(wire.Ended(ID))  # the host is gone: the message is not needed
    client.reset()


def test_a_full_fifo_leaves_messages_in_the_mailbox(tmp_path: Path) -> None:
    from flask_longtask.backends.diskcache.connections import Cache

    cache = Cache(str(tmp_path))
    reader = fifo.FifoReader(str(tmp_path))
    client = fifo.FifoClient(str(tmp_path), lambda: cache)
    try:
        sent = 0
        while not fifo.read_mailbox(cache):  # (reads it empty: until a message waits there)
            assert client.send(wire.Queued(f"{sent:032x}"))
            sent += 1
            if sent % 500 == 0:
                client.send(wire.Ended(ID))
                mailed = fifo.read_mailbox(cache)
                if mailed:
                    assert mailed == [wire.Ended(ID)]
                    break
        queued = reader.read()
        assert queued[:3] == [wire.Queued(f"{n:032x}") for n in range(3)]
    finally:
        client.reset()
        reader.close()
        cache.close()


def test_the_queue_length_is_read_as_the_host_wrote_it(tmp_path: Path) -> None:
    assert fifo.read_queued(str(tmp_path)) is None  # no host
    count = fifo.QueueCount(str(tmp_path))
    count.publish(3)
    assert fifo.read_queued(str(tmp_path)) == 3
    count.close()
    assert fifo.read_queued(str(tmp_path)) is None  # no host, no count
    (tmp_path / fifo.QUEUED_NAME).write_bytes(b"-1 or anything")
    assert fifo.read_queued(str(tmp_path)) is None


def test_delayed_jobs_are_queued_when_due_and_not_while_their_worker_has_them() -> None:
    queue, later = jobqueue.JobQueue(), jobqueue.Delayed()
    assert later.next_due(queue) == float("inf") and not later
    later.add("b", 20.0)
    later.add("a", 10.0)
    later.add("c", 30.0)
    assert later.next_due(queue) == 10.0
    queue.know("a")  # its worker has not yet reported the attempt's end
    assert later.next_due(queue) == 20.0  # (the host wakes for it at the "done" instead)
    assert later.take_due(25.0, queue) == ["b"]
    queue.forget("a")
    assert later.take_due(25.0, queue) == ["a"]
    assert "c" in later and len(later) == 1 and later.next_due(queue) == 30.0
