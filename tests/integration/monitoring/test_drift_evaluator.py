"""The drift evaluator process (monitoring/drift_service.py) and its feeders
(monitoring/drift_remote.py), real processes on a Unix socket: the same figures as the
in-process monitor, one set of windows for several feeders, and an evaluator that dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from monitoring.drift import DriftMonitor
from monitoring.drift_remote import (
    DriftServiceProcess,
    DriftSettings,
    RemoteDriftMonitor,
)
from monitoring.observer import ModelEventRecord, ObservedRecord, RequestRecord
from tests.unit.monitoring.conftest import Classifier, draw

WINDOW = 200
SETTINGS = DriftSettings(window=WINDOW, alpha=0.05)


def ready(classifier: Classifier) -> ModelEventRecord:
    return ModelEventRecord(
        "clf",
        "1",
        "READY",
        str(classifier.version_dir),
        0.1,
        inputs={"input": ("FP32", (-1, 16))},
        outputs={"output": ("FP32", (-1, 4))},
        max_batch_size=8,
    )


def requests(classifier: Classifier, x: np.ndarray, rows: int = 4) -> list[RequestRecord]:
    y = classifier.run(x)
    return [
        RequestRecord(
            "clf",
            "1",
            "http",
            True,
            x[i : i + rows].shape[0],
            0.001,
            inputs={"input": x[i : i + rows]},
            outputs={"output": y[i : i + rows]},
        )
        for i in range(0, x.shape[0], rows)
    ]


def feed(
    observe: Callable[[ObservedRecord], None],
    step: Callable[[], None],
    records: list[RequestRecord],
) -> None:
    for i, record in enumerate(records):
        observe(record)
        if i % 50 == 49:  # a pass every 200 rows: the intake never fills
            step()
    step()


@pytest.fixture
def evaluator() -> Iterator[DriftServiceProcess]:
    process = DriftServiceProcess(SETTINGS)
    process.ensure_running()
    yield process
    process.stop()


def feeder(process: DriftServiceProcess, owner: bool = False) -> RemoteDriftMonitor:
    return RemoteDriftMonitor(process.address, WINDOW, process if owner else None)


def wait_for(condition: Callable[[], Any], step: Callable[[], None], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        step()
        time.sleep(0.05)
    return result


def assert_same_figures(got: dict[str, Any], expected: dict[str, Any], count: str) -> None:
    """The evaluator's detail equals the in-process monitor's: counts, and the last window's
    decision, KS distances and p-values."""
    for key in ("rows_seen", "detections_total", "consecutive_detections", count):
        assert got[key] == expected[key], key
    assert got["last_window"]["drift"] is True
    for ours, theirs in zip(
        got["last_window"]["signals"], expected["last_window"]["signals"], strict=True
    ):
        assert ours["statistic"] == theirs["statistic"]
        assert ours["p_value"] == pytest.approx(theirs["p_value"])


def test_the_evaluator_gives_the_in_process_monitors_figures(classifier: Classifier) -> None:
    local = DriftMonitor(window=WINDOW, alpha=0.05)
    process = DriftServiceProcess(SETTINGS)
    remote = feeder(process, owner=True)
    remote.start()
    try:
        for monitor in (local, remote):
            monitor.observe(ready(classifier))
        local.step()
        wait_for(lambda: remote.detail("clf", "1"), remote.step)
        rng = np.random.default_rng(5)
        records = requests(classifier, draw(rng, 1000)) + requests(
            classifier, draw(rng, 400, shift=0.7)
        )
        feed(local.observe, local.step, records)
        feed(remote.observe, remote.step, records)
        expected = local.detail("clf", "1")
        got = wait_for(
            lambda: (d := remote.detail("clf", "1")) and d["windows_total"] == 7 and d, remote.step
        )
    finally:
        remote.close()
    assert expected is not None and expected["windows_total"] == 7
    assert_same_figures(got, expected, "open_window_rows")
    families = {f.metric.name: f.metric for f in remote.families()}
    windows = families["ferry_drift_windows_total"].samples
    assert [s.value for s in windows] == [7]
    assert process.pid is None  # closing the owning feeder ended its evaluator


def test_two_feeders_fill_one_set_of_windows(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    first, second = feeder(evaluator), feeder(evaluator)
    rng = np.random.default_rng(6)
    for monitor in (first, second):
        monitor.observe(ready(classifier))
        wait_for(lambda m=monitor: m.detail("clf", "1"), monitor.step)  # type: ignore[misc]
    feed(first.observe, first.step, requests(classifier, draw(rng, 300)))
    feed(second.observe, second.step, requests(classifier, draw(rng, 300)))
    detail = wait_for(
        lambda: (d := first.detail("clf", None)) and d["rows_seen"] == 600 and d, first.step
    )
    assert detail["windows_total"] == 3 and detail["open_window_rows"] == 0  # every row once
    # one feeder unloading the version leaves it monitored for the other, windows kept
    first.observe(ModelEventRecord("clf", "1", "UNAVAILABLE"))
    first.step()
    assert first.detail("clf", None) is None
    feed(second.observe, second.step, requests(classifier, draw(rng, 100)))
    detail = wait_for(
        lambda: (d := second.detail("clf", "1")) and d["rows_seen"] == 700 and d, second.step
    )
    assert detail["windows_total"] == 3 and detail["open_window_rows"] == 100
    for monitor in (first, second):
        monitor.close()
    assert evaluator.pid is not None  # feeders that do not own it leave it running


def test_an_evaluator_that_dies_is_started_again_and_fed_again(classifier: Classifier) -> None:
    process = DriftServiceProcess(SETTINGS)
    monitor = feeder(process, owner=True)
    monitor.start()
    try:
        monitor.observe(ready(classifier))
        wait_for(lambda: monitor.detail("clf", "1"), lambda: None)
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process.pid not in (None, pid), lambda: None)
        assert process.starts == 2
        # the new evaluator knows the version again (the feeder replays READY) and monitors it
        rng = np.random.default_rng(7)
        for record in requests(classifier, draw(rng, 200)):
            monitor.observe(record)
        detail = wait_for(
            lambda: (d := monitor.detail("clf", "1")) and d["windows_total"] == 1 and d,
            lambda: None,
        )
        assert detail["state"] == "active"
    finally:
        monitor.close()
    assert process.pid is None


def test_a_full_intake_counts_what_it_drops(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    monitor = feeder(evaluator)
    monitor.observe(ready(classifier))
    wait_for(lambda: monitor.detail("clf", "1"), monitor.step)
    record = requests(classifier, draw(np.random.default_rng(8), 1), rows=1)[0]
    assert record.inputs is not None  # FP64 rows do not fit the FP32 ring: they take the intake
    record.inputs = {"input": record.inputs["input"].astype(np.float64)}
    for _ in range(1500):  # no pass meanwhile: the intake (at least 1,024 rows) fills
        monitor.observe(record)
    monitor.step()
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["rows_seen"] == 1024 and d, monitor.step
    )
    assert detail["dropped_rows"] == 1500 - 1024
    monitor.close()


def test_a_feeder_without_the_key_is_refused(evaluator: DriftServiceProcess) -> None:
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    wait_for(lambda: os.path.exists(evaluator.address.path), lambda: None)
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(evaluator.address.path, family="AF_UNIX", authkey=b"not the key")
    assert evaluator.pid is not None  # and the evaluator keeps serving


def test_the_feeder_thread_never_waits_for_a_snapshot(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    """A feeder pass asks for a snapshot and reads it in a later pass: an evaluator that cannot
    answer (stopped here; at nice 10 on busy CPUs, late) holds up neither the rows nor the pass."""
    monitor = feeder(evaluator)
    monitor.observe(ready(classifier))
    wait_for(lambda: monitor.detail("clf", "1"), monitor.step)
    pid = evaluator.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for record in requests(classifier, draw(np.random.default_rng(9), 200)):
            monitor.observe(record)
        monitor.step(snapshot=True, wait=False)  # returns at once: nothing read yet
        monitor.step(snapshot=True, wait=False)  # one snapshot asked for at a time
        assert monitor.detail("clf", "1")["rows_seen"] == 0  # type: ignore[index]
    finally:
        os.kill(pid, signal.SIGCONT)
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["windows_total"] == 1 and d,
        lambda: monitor.step(snapshot=False, wait=False),
    )
    assert detail["rows_seen"] == 200 and detail["dropped_rows"] == 0
    monitor.close()


def test_a_feeder_with_a_sample_rate_sends_that_fraction(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    monitor = RemoteDriftMonitor(evaluator.address, WINDOW, sample_rate=0.25)
    monitor.observe(ready(classifier))
    wait_for(lambda: monitor.detail("clf", "1"), monitor.step)
    records = requests(classifier, draw(np.random.default_rng(10), 800), rows=1)
    feed(monitor.observe, monitor.step, records)
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["rows_seen"] == 200 and d, monitor.step
    )
    assert detail["windows_total"] == 1 and detail["dropped_rows"] == 0
    monitor.close()


def ring_open(monitor: RemoteDriftMonitor) -> bool:
    """The feeder has given the version a ring (one pass after a snapshot named its tensors)."""
    feed = monitor._feeds.get(("clf", "1"))
    return feed is not None and feed.ring is not None


def ringed_feeder(classifier: Classifier, evaluator: DriftServiceProcess) -> RemoteDriftMonitor:
    """A feeder with the version READY and its ring made."""
    monitor = feeder(evaluator)
    monitor.observe(ready(classifier))
    wait_for(lambda: ring_open(monitor), monitor.step)
    return monitor


def test_rows_through_the_ring_give_the_in_process_monitors_figures(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    local = DriftMonitor(window=WINDOW, alpha=0.05)
    remote = feeder(evaluator)
    for monitor in (local, remote):
        monitor.observe(ready(classifier))
    local.step()
    wait_for(lambda: ring_open(remote), remote.step)
    rng = np.random.default_rng(11)
    records = requests(classifier, draw(rng, 600)) + requests(classifier, draw(rng, 400, shift=0.7))
    feed(local.observe, local.step, records)
    for record in records:  # no feeder pass needed: the evaluator reads the ring by itself
        remote.observe(record)
    assert remote._feeds[("clf", "1")].intake.queued_rows == 0
    expected = local.detail("clf", "1")
    got = wait_for(
        lambda: (d := remote.detail("clf", "1")) and d["windows_total"] == 5 and d,
        lambda: remote.step(snapshot=True, wait=False),
    )
    remote.close()
    assert expected is not None and expected["windows_total"] == 5
    assert_same_figures(got, expected, "dropped_rows")


def test_rows_that_do_not_fit_the_ring_take_the_socket(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    monitor = ringed_feeder(classifier, evaluator)
    rng = np.random.default_rng(12)
    records = requests(classifier, draw(rng, 200))
    for record in records[::2]:  # FP64 inputs: not the ring's FP32
        assert record.inputs is not None
        record.inputs = {"input": record.inputs["input"].astype(np.float64)}
    feed(monitor.observe, monitor.step, records)
    assert monitor._feeds[("clf", "1")].intake.dropped_rows == 0
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["windows_total"] == 1 and d, monitor.step
    )
    assert detail["rows_seen"] == 200 and detail["dropped_rows"] == 0
    monitor.close()


def test_a_full_ring_counts_what_it_drops(
    classifier: Classifier, evaluator: DriftServiceProcess
) -> None:
    monitor = ringed_feeder(classifier, evaluator)
    ring = monitor._feeds[("clf", "1")].ring
    assert ring is not None
    capacity = ring.layout.capacity
    record = requests(classifier, draw(np.random.default_rng(13), 8), rows=8)[0]
    pid = evaluator.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the evaluator reads nothing meanwhile
    try:
        for _ in range(capacity // 8 + 2):
            monitor.observe(record)
    finally:
        os.kill(pid, signal.SIGCONT)
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["rows_seen"] == capacity and d,
        monitor.step,
    )
    assert detail["dropped_rows"] == 16 - capacity % 8
    monitor.close()


def test_the_dropped_rows_of_every_feeder_add_up(classifier: Classifier) -> None:
    import logging

    from monitoring.drift_service import DriftService

    level = logging.getLogger("ferry").level
    service = DriftService(DriftMonitor(True, WINDOW, 0.05))
    try:
        for feeder_id in (1, 2):
            service.handle(feeder_id, ("event", ready(classifier)))
        service.handle(1, ("rows", "clf", "1", {}, {}, 0, 5, 0))
        service.handle(2, ("rows", "clf", "1", {}, {}, 0, 7, 0))
        service.handle(1, ("rows", "clf", "1", {}, {}, 0, 6, 0))  # a running count: 6, not 11
        detail = service.engine.detail("clf", "1")
        assert detail is not None and detail["dropped_rows"] == 13
        # a counter never goes down: not when a feeder's count starts again (a reload) ...
        service.handle(2, ("rows", "clf", "1", {}, {}, 0, 1, 0))
        assert service.engine.detail("clf", "1")["dropped_rows"] == 14  # type: ignore[index]
        service.disconnect(2)  # ... nor when a feeder goes away
        service.handle(1, ("rows", "clf", "1", {}, {}, 0, 6, 0))
        assert service.engine.detail("clf", "1")["dropped_rows"] == 14  # type: ignore[index]
        # the last holder unloading it ends the version: loaded again, it counts from zero
        service.handle(1, ("event", ModelEventRecord("clf", "1", "UNAVAILABLE")))
        service.handle(1, ("event", ready(classifier)))
        service.handle(1, ("rows", "clf", "1", {}, {}, 0, 2, 0))
        assert service.engine.detail("clf", "1")["dropped_rows"] == 2  # type: ignore[index]
    finally:
        logging.getLogger("ferry").removeHandler(service.logs)
        logging.getLogger("ferry").setLevel(level)


def test_a_ring_that_cannot_be_made_leaves_the_rows_on_the_socket(
    classifier: Classifier, evaluator: DriftServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from monitoring import drift_remote

    def no_room(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")  # a full /dev/shm

    monkeypatch.setattr(drift_remote, "RingWriter", no_room)
    monitor = feeder(evaluator)
    monitor.observe(ready(classifier))
    feed_of = monitor._feeds[("clf", "1")]
    wait_for(lambda: feed_of.ring_tensors is not None, monitor.step)  # tried, refused
    feed(monitor.observe, monitor.step, requests(classifier, draw(np.random.default_rng(14), 200)))
    detail = wait_for(
        lambda: (d := monitor.detail("clf", "1")) and d["windows_total"] == 1 and d, monitor.step
    )
    assert detail["rows_seen"] == 200 and detail["dropped_rows"] == 0
    assert feed_of.ring is None
    monitor.close()


def test_rows_wait_in_the_ring_while_the_evaluator_starts(classifier: Classifier) -> None:
    """The reference names the signals' tensors: a READY version gets its ring at once, and the
    rows served before the evaluator listens are evaluated, not dropped, once it does."""
    process = DriftServiceProcess(SETTINGS)  # not started yet
    monitor = feeder(process)
    try:
        monitor.observe(ready(classifier))
        monitor.step()  # nobody listens: no connection, but a ring
        assert ring_open(monitor)
        for record in requests(classifier, draw(np.random.default_rng(15), 400)):
            monitor.observe(record)
        assert monitor._feeds[("clf", "1")].intake.queued_rows == 0
        process.ensure_running()
        detail = wait_for(
            lambda: (d := monitor.detail("clf", "1")) and d["windows_total"] == 2 and d,
            monitor.step,
        )
        assert detail["rows_seen"] == 400 and detail["dropped_rows"] == 0
    finally:
        monitor.close()
        process.stop()
