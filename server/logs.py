"""Server logging: one handler on the root logger (stderr or `--log-file`), text or JSON lines,
Triton's per-severity switches (`--log-info/--log-warning/--log-error/--log-verbose`), and the
logging extension's settings (`GET/POST /v2/logging`, gRPC `LogSettings`).

Third-party libraries (uvicorn, hpack, grpc, onnxruntime, opentelemetry...) log at WARNING and
above only, unless the verbose level is 1 or more (`--log-level debug`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import ErrorKind, ServingError, invalid

# Triton's names are accepted too: "default" and "ISO8601" are both ferry's text lines.
LOG_FORMATS = ("text", "json")
LOG_FORMAT_ALIASES = {"default": "text", "ISO8601": "text"}
THIRD_PARTY_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "hpack",
    "h2",
    "grpc",
    "asyncio",
    "onnxruntime",
    "opentelemetry",
    "urllib3",
    "httpx",
    "multipart",
    "python_multipart",
)
FIELDS_ATTRIBUTE = "ferry_fields"  # LogRecord attribute: structured fields of a line


@dataclass(frozen=True)
class LogSettings:
    """What the logging extension shows (field names are the extension's JSON keys)."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "text"

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def log_format_name(value: str) -> str:
    """A --log-format / log_format value as ferry's name; ValueError for an unknown one."""
    name = LOG_FORMAT_ALIASES.get(value, value)
    if name not in LOG_FORMATS:
        raise ValueError(
            f"invalid argument for log_format, got: {value} (text, json; Triton's default and "
            "ISO8601 are text)"
        )
    return name


def settings_for_level(level: str) -> LogSettings:
    """The severities `--log-level debug|info|warning|error` switches on."""
    level = level.lower()
    return LogSettings(
        log_info=level in ("debug", "info"),
        log_warning=level in ("debug", "info", "warning"),
        log_error=True,
        log_verbose_level=1 if level == "debug" else 0,
    )


def _iso_time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((created - seconds) * 1000):03d}Z"
    )


def _field_text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="')) else text


class TextFormatter(logging.Formatter):
    """`2026-12-04T10:00:00.123Z INFO ferry.requests: message key=value ...` (a worker of
    `--workers N` adds its slot as the last field, `worker=0`: the lines read as one
    server's, and a log parser finds the worker as it finds any other field)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.tag = "" if worker is None else f" worker={worker}"

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, Any] | None = getattr(record, FIELDS_ATTRIBUTE, None)
        line = (
            f"{_iso_time(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        )
        if fields:
            line += " " + " ".join(f"{k}={_field_text(v)}" for k, v in fields.items())
        line += self.tag
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the line's own fields (and
    `worker`, the slot of a worker of `--workers N`)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        fields: Mapping[str, Any] | None = getattr(record, FIELDS_ATTRIBUTE, None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class SeverityFilter(logging.Filter):
    """Triton's switches: each severity on or off on its own."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return self.settings.log_error
        if level >= logging.WARNING:
            return self.settings.log_warning
        if level >= logging.INFO:
            return self.settings.log_info
        return self.settings.log_verbose_level > 0


class LogControl:
    """The installed handler and its settings; `update` is the logging extension's POST."""

    def __init__(self, settings: LogSettings, worker: int | None = None) -> None:
        self.settings = settings
        self.worker = worker
        stream: logging.Handler = (
            logging.FileHandler(settings.log_file)
            if settings.log_file
            else logging.StreamHandler(sys.stderr)
        )
        self.handler = stream
        self.filter = SeverityFilter(settings)
        self.handler.addFilter(self.filter)
        logging.getLogger().addHandler(self.handler)
        self._apply()

    def _apply(self) -> None:
        settings = self.settings
        self.filter.settings = settings
        self.handler.setFormatter(
            JsonFormatter(self.worker)
            if settings.log_format == "json"
            else TextFormatter(self.worker)
        )
        verbose = settings.log_verbose_level > 0
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
        for name in THIRD_PARTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
        _quiet_onnxruntime(verbose)

    def update(self, changes: Mapping[str, Any]) -> LogSettings:
        """Apply a log setting request (unknown keys and null values change nothing); every
        value is checked before any is applied."""
        if changes.get("log_file") is not None:
            raise ServingError(
                ErrorKind.UNSUPPORTED,
                "log file location can not be updated through network protocol",
            )
        updates: dict[str, Any] = {}
        for key in ("log_info", "log_warning", "log_error"):
            value = changes.get(key)
            if value is not None:
                if not isinstance(value, bool):
                    raise invalid(f"expect boolean for '{key}'")
                updates[key] = value
        verbose = changes.get("log_verbose_level")
        if verbose is not None:
            if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
                raise invalid("expect a non-negative integer for 'log_verbose_level'")
            updates["log_verbose_level"] = verbose
        log_format = changes.get("log_format")
        if log_format is not None:
            if not isinstance(log_format, str):
                raise invalid("expect string for 'log_format'")
            try:
                updates["log_format"] = log_format_name(log_format)
            except ValueError as exc:
                raise invalid(str(exc)) from None
        if updates:
            self.settings = dataclasses.replace(self.settings, **updates)
            self._apply()
        return self.settings

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def _quiet_onnxruntime(verbose: bool) -> None:
    """ONNX Runtime's own (C++) logger: silent unless verbose (ferry reports the errors it
    raises; its sessions read the default severity when they are created)."""
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return
    onnxruntime.set_default_logger_severity(1 if verbose else 4)


def configure_logging(settings: LogSettings, worker: int | None = None) -> LogControl:
    """Install ferry's log handler on the root logger (`worker`: this process is that worker
    of `--workers N`, and says so on every line)."""
    return LogControl(settings, worker)
