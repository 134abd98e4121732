"""Log lines (text and JSON), Triton's severity switches and log settings, the request log's
sampling and levels, and model state changes logged once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.observer import ModelEventRecord
from server.errors import ErrorKind, ServingError
from server.logs import (
    FIELDS_ATTRIBUTE,
    THIRD_PARTY_LOGGERS,
    JsonFormatter,
    LogControl,
    LogSettings,
    TextFormatter,
    log_format_name,
    settings_for_level,
)
from server.operations import plain_status
from server.request_log import ModelEventLog, RequestLog
from server.types import InferenceRequest


def record(level: int = logging.INFO, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("ferry.requests", level, __file__, 1, "inference %s", ("x",), None)
    setattr(entry, FIELDS_ATTRIBUTE, fields)
    return entry


def test_text_lines_carry_the_fields_as_key_value_pairs() -> None:
    line = TextFormatter().format(record(model="mlp", status="200", request_id="", client="a b"))
    stamp, level, name, rest = line.split(" ", 3)
    assert stamp.endswith("Z") and "T" in stamp and level == "INFO"
    assert name == "ferry.requests:"
    assert rest == 'inference x model=mlp status=200 request_id="" client="a b"'


def test_a_workers_text_lines_are_a_single_servers_with_the_worker_last() -> None:
    """Under --workers N a line names its worker in a last field, and is otherwise unchanged
    (the same prefix and fields as one process writes, for whoever greps or parses them)."""
    entry = record(model="mlp", status="200")
    assert TextFormatter(worker=1).format(entry) == TextFormatter().format(entry) + " worker=1"
    bare = logging.LogRecord("ferry", logging.INFO, __file__, 1, "stopped", (), None)
    assert TextFormatter(worker=0).format(bare).endswith(" INFO ferry: stopped worker=0")


def test_json_lines_are_one_object_with_the_fields() -> None:
    entry = json.loads(JsonFormatter().format(record(logging.WARNING, model="mlp", rows=3)))
    assert entry["level"] == "WARNING" and entry["logger"] == "ferry.requests"
    assert entry["message"] == "inference x" and entry["model"] == "mlp" and entry["rows"] == 3


def test_format_names_and_levels() -> None:
    assert [log_format_name(n) for n in ("text", "json", "default", "ISO8601")] == [
        "text",
        "json",
        "text",
        "text",
    ]
    with pytest.raises(ValueError, match="invalid argument for log_format"):
        log_format_name("xml")
    assert settings_for_level("debug").log_verbose_level == 1
    warning = settings_for_level("warning")
    assert not warning.log_info and warning.log_warning and warning.log_error


@pytest.fixture
def control(tmp_path: Path) -> Iterator[LogControl]:
    root = logging.getLogger()
    level = root.level
    control = LogControl(LogSettings(log_file=str(tmp_path / "ferry.log")))
    try:
        yield control
    finally:
        control.close()
        root.setLevel(level)
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def lines(control: LogControl) -> list[str]:
    control.handler.flush()
    return Path(control.settings.log_file).read_text().splitlines()


def test_severities_switch_on_and_off_on_their_own(control: LogControl) -> None:
    log = logging.getLogger("ferry.test")
    log.info("info one")
    log.debug("debug one")  # verbose level 0: dropped
    control.update({"log_info": False, "log_verbose_level": 1})
    log.info("info two")
    log.debug("debug two")
    log.warning("warning one")
    control.update({"log_warning": False, "log_format": "json"})
    log.warning("warning two")
    log.error("error one")
    text = lines(control)
    assert [line.split(": ", 1)[1] for line in text[:3]] == [
        "info one",
        "debug two",
        "warning one",
    ]
    assert json.loads(text[3])["message"] == "error one" and len(text) == 4


def test_third_party_libraries_are_quiet_unless_verbose(control: LogControl) -> None:
    logging.getLogger("hpack.hpack").info("header decoded")
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.error").warning("uvicorn warns")
    control.update({"log_verbose_level": 1})
    logging.getLogger("hpack.hpack").debug("hpack detail")
    text = "\n".join(lines(control))
    assert "header decoded" not in text and "Started server process" not in text
    assert "uvicorn warns" in text and "hpack detail" in text


@pytest.mark.parametrize(
    ("changes", "kind", "fragment"),
    [
        ({"log_file": "/tmp/x"}, ErrorKind.UNSUPPORTED, "can not be updated"),
        ({"log_info": "yes"}, ErrorKind.INVALID_ARG, "expect boolean for 'log_info'"),
        ({"log_verbose_level": -1}, ErrorKind.INVALID_ARG, "non-negative integer"),
        ({"log_verbose_level": True}, ErrorKind.INVALID_ARG, "non-negative integer"),
        ({"log_format": "xml"}, ErrorKind.INVALID_ARG, "invalid argument for log_format"),
        ({"log_info": False, "log_format": 3}, ErrorKind.INVALID_ARG, "expect string"),
    ],
)
def test_bad_log_settings_change_nothing(
    control: LogControl, changes: dict[str, object], kind: ErrorKind, fragment: str
) -> None:
    before = control.settings
    with pytest.raises(ServingError, match=fragment) as caught:
        control.update(changes)
    assert caught.value.kind == kind and control.settings == before


def test_unknown_keys_and_nulls_change_nothing(control: LogControl) -> None:
    before = control.settings
    assert control.update({"bogus": 1, "log_info": None, "log_file": None}) == before


def request(protocol: str = "http") -> InferenceRequest:
    return InferenceRequest("mlp", "1", {}, id="r-1", protocol=protocol, client="10.0.0.1:5")


def test_request_lines_are_sampled_evenly(caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(plain_status, enabled=True, rate=0.25)
    with caplog.at_level(logging.INFO, "ferry.requests"):
        for _ in range(20):
            log.success(request(), "mlp", "1", 4, 0.002)
    assert len(caplog.records) == 5
    fields = getattr(caplog.records[0], FIELDS_ATTRIBUTE)
    assert fields == {
        "protocol": "http",
        "model": "mlp",
        "version": "1",
        "status": "OK",
        "latency_ms": 2.0,
        "batch_size": 4,
        "request_id": "r-1",
        "client": "10.0.0.1:5",
    }


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (ServingError(ErrorKind.INTERNAL, "model execution failed"), logging.ERROR),
        (ServingError(ErrorKind.UNAVAILABLE, "Exceeds maximum queue size"), logging.WARNING),
        (ServingError(ErrorKind.UNSUPPORTED, "decoupled"), logging.WARNING),
        (RuntimeError("a bug"), logging.ERROR),
        (ServingError(ErrorKind.INVALID_ARG, "bad shape"), None),  # the client's fault
        (asyncio.CancelledError(), None),
    ],
)
def test_server_failures_are_logged_without_log_requests(
    caplog: pytest.LogCaptureFixture, error: BaseException, level: int | None
) -> None:
    log = RequestLog(plain_status)  # --log-requests off
    with caplog.at_level(logging.INFO, "ferry.requests"):
        log.failure(request("grpc"), "mlp", "1", 0.001, error)
    assert [r.levelno for r in caplog.records] == ([] if level is None else [level])
    if level is not None:
        assert getattr(caplog.records[0], FIELDS_ATTRIBUTE)["error"]
        assert (caplog.records[0].exc_info is not None) == isinstance(error, RuntimeError)


def test_client_failures_are_logged_with_log_requests(caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(plain_status, enabled=True, rate=0.01)  # failures are never sampled out
    with caplog.at_level(logging.INFO, "ferry.requests"):
        log.failure(request(), "mlp", "1", 0.001, ServingError(ErrorKind.NOT_FOUND, "no"))
    assert getattr(caplog.records[0], FIELDS_ATTRIBUTE)["status"] == "NOT_FOUND"


def test_model_state_changes(caplog: pytest.LogCaptureFixture) -> None:
    events = ModelEventLog()
    with caplog.at_level(logging.INFO, "ferry.models"):
        events.observe(ModelEventRecord("mlp", "1", "READY", load_duration_s=0.5))
        events.observe(ModelEventRecord("mlp", "1", "UNAVAILABLE", reason="unloaded"))
        events.observe(ModelEventRecord("bad", "2", "UNAVAILABLE", reason="boom"))
        events.observe(ModelEventRecord("cfg", "", "UNAVAILABLE", reason="bad config"))
        events.observe(ModelEventRecord("pipe", "1", "READY"))
        events.observe(ModelEventRecord("pipe", "1", "UNAVAILABLE", reason="'mlp' is gone"))
        events.observe(ModelEventRecord("pipe", "1", "UNAVAILABLE", reason="'mlp' is gone"))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "model 'mlp' version 1 is READY"),
        (logging.WARNING, "model 'mlp' version 1 unloaded"),
        (logging.ERROR, "model 'bad' version 2 failed to load: boom"),
        (logging.ERROR, "model 'cfg' failed to load: bad config"),
        (logging.INFO, "model 'pipe' version 1 is READY"),
        # a version that served and stops (an ensemble's composing model went away)
        (logging.WARNING, "model 'pipe' version 1 is not ready: 'mlp' is gone"),
        # then it fails to load again while the model is still missing
        (logging.ERROR, "model 'pipe' version 1 failed to load: 'mlp' is gone"),
    ]
