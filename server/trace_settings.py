"""Trace settings with Triton's semantics: `--trace-config`, the global setting and per-model
settings of the trace extension (`GET/POST v2[/models/NAME]/trace/setting`, gRPC `TraceSetting`),
and which requests are sampled.

A model setting names only some fields; the others follow the global setting, and a null value
clears a field back to it. A new setting object replaces the old one (its sampling counters
start again), as Triton's TraceManager does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.errors import ErrorKind, ServingError, invalid
from server.sampling import CounterFactory, SampleCounter, local_counter, trace_key

MODES = ("triton", "opentelemetry")
LEVELS = ("TIMESTAMPS", "TENSORS")  # empty: OFF
FIELDS = ("level", "rate", "count", "log_frequency")  # what the protocol may change
REQUEST_KEYS = {  # each field's key in a trace setting request
    "level": "trace_level",
    "rate": "trace_rate",
    "count": "trace_count",
    "log_frequency": "log_frequency",
}
OPENTELEMETRY_DEFAULTS = {
    "url": "http://localhost:4318/v1/traces",
    "bsp_max_export_batch_size": "512",
    "bsp_schedule_delay": "5000",
    "bsp_max_queue_size": "2048",
}
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
Change = str | list[str] | None  # a request's value: a string, a level list, null


class TraceConfigError(ValueError):
    """A --trace-config value that cannot be used."""


@dataclass(frozen=True)
class TraceSetting:
    """One setting (global or a model's); `specified` names the fields a model set itself."""

    level: frozenset[str] = frozenset()
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""
    mode: str = "triton"
    options: Mapping[str, str] = field(default_factory=dict)  # the mode's own settings
    specified: frozenset[str] = frozenset()

    @property
    def invalid_reason(self) -> str:
        """Why this setting cannot trace ('' when it can); Triton's words."""
        if not self.level:
            return "tracing is disabled"
        if self.rate == 0:
            return "sample rate must be non-zero"
        if self.mode == "triton" and not self.file:
            return "trace file name is not given"
        return ""

    def as_json(self) -> dict[str, Any]:
        """The extension's answer: strings and a level list, mode-specific keys last."""
        answer: dict[str, Any] = {
            "trace_level": [lvl for lvl in LEVELS if lvl in self.level] or ["OFF"],
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
        }
        if self.mode == "triton":
            answer["log_frequency"] = str(self.log_frequency)
            answer["trace_file"] = self.file
        answer["trace_mode"] = self.mode
        answer.update(self.options)
        return answer

    def own_changes(self) -> dict[str, Change]:
        """The fields this setting set itself, as a trace setting request that sets them."""
        changes: dict[str, Change] = {}
        for name in FIELDS:
            if name in self.specified:
                value = getattr(self, name)
                changes[REQUEST_KEYS[name]] = (
                    [lvl for lvl in LEVELS if lvl in value] or ["OFF"]
                    if name == "level"
                    else str(value)
                )
        return changes


@dataclass
class Sampler:
    """Triton's sampling of one setting: every `rate`-th request while `count` lasts; a request
    that carries a trace context is always traced (while the level is on).

    Its counter holds (requests seen, traces left; -1: unlimited). In a worker of
    `--workers N` the counter is the server's (server/sampling.py), so `rate` and `count` are
    the server's, as in one Triton."""

    setting: TraceSetting
    counter: SampleCounter

    def sample(self, propagated: bool) -> bool:
        setting = self.setting
        if not setting.level:
            return False
        if not setting.rate:  # rate 0: only requests that carry a trace context
            return propagated
        if setting.invalid_reason and not propagated:
            return False
        rate = setting.rate

        def step(seen: int, remaining: int) -> tuple[int, int, bool]:
            if remaining == 0 and not propagated:
                return seen, remaining, False
            seen += 1
            hit = seen % rate == 0
            if hit and remaining > 0:
                remaining -= 1
            elif hit and remaining == 0:
                hit = False
            return seen, remaining, hit

        return self.counter.update(step) or propagated


def parse_trace_config(values: Iterable[str]) -> TraceSetting:
    """`--trace-config` values: `<setting>=<value>` (rate, level, count, mode; several may share
    one flag, comma-separated) or `<mode>,<setting>=<value>` (triton: file, log-frequency;
    opentelemetry: url, resource, bsp_*)."""
    levels: set[str] = set()
    rate, count, log_frequency, file, mode = 1000, -1, 0, "", "triton"
    options: dict[str, str] = {}
    resources: list[str] = []
    for value in values:
        head, _, rest = value.partition(",")
        if "=" not in head and head in MODES:
            key, equals, text = rest.partition("=")
            if not equals:
                raise TraceConfigError(f"'{value}': expected {head},<setting>=<value>")
            if head == "triton":
                if key == "file":
                    file = text
                elif key == "log-frequency":
                    log_frequency = _number(key, text, 0, UINT32_MAX)
                else:
                    raise TraceConfigError(f"unknown triton trace setting '{key}'")
            elif key == "resource":
                resources.append(text)
            elif key in OPENTELEMETRY_DEFAULTS:
                if key != "url":
                    _number(key, text, 0, UINT32_MAX)
                options[key] = text
            else:
                raise TraceConfigError(f"unknown opentelemetry trace setting '{key}'")
            continue
        for item in value.split(","):
            key, equals, text = item.partition("=")
            if not equals:
                raise TraceConfigError(f"'{item}': expected <setting>=<value>")
            if key == "rate":
                rate = _number(key, text, 0, UINT32_MAX)
            elif key == "count":
                count = _number(key, text, -1, INT32_MAX)
            elif key == "level":
                if text == "OFF":
                    levels.clear()
                elif text in LEVELS:
                    levels.add(text)
                else:
                    raise TraceConfigError(
                        f"unknown trace level '{text}' (OFF, {', '.join(LEVELS)})"
                    )
            elif key == "mode":
                if text not in MODES:
                    raise TraceConfigError(f"unknown trace mode '{text}' ({', '.join(MODES)})")
                mode = text
            else:
                raise TraceConfigError(f"unknown trace setting '{key}' (rate, level, count, mode)")
    if mode == "opentelemetry":
        if "TENSORS" in levels:
            raise TraceConfigError("opentelemetry mode does not support the TENSORS level")
        options = {**OPENTELEMETRY_DEFAULTS, **options}
        if resources:
            options["resource"] = ",".join(resources)
    else:
        options = {}
    setting = TraceSetting(frozenset(levels), rate, count, log_frequency, file, mode, options)
    if setting.level and mode == "triton" and not file:  # rate=0 is allowed: see Sampler
        raise TraceConfigError("invalid trace setting: trace file name is not given")
    return setting


def _number(key: str, text: str, low: int, high: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise TraceConfigError(f"trace setting {key}: '{text}' is not a number") from None
    if not low <= number <= high:
        raise TraceConfigError(f"trace setting {key}: {number} is outside [{low}, {high}]")
    return number


class TraceSettings:
    """The global setting, the models' own, and their samplers."""

    def __init__(self, default: TraceSetting, counters: CounterFactory = local_counter) -> None:
        self.default = default
        self.global_setting = default
        self.counters = counters  # the server's in a worker of `--workers N` (see Sampler)
        self.models: dict[str, TraceSetting] = {}
        self._samplers: dict[str, Sampler] = {"": self._sampler("", default)}
        self.active = bool(default.level)  # False: no request is ever traced (the hot path)

    def _sampler(self, model: str, setting: TraceSetting) -> Sampler:
        """A new sampler: its counter starts again (in a worker of `--workers N`, the
        supervisor restarts the server's counter once every worker has the new setting)."""
        return Sampler(setting, self.counters(trace_key(model), 0, setting.count))

    def setting(self, model: str = "") -> TraceSetting:
        return self.models.get(model, self.global_setting) if model else self.global_setting

    def sample(self, model: str, propagated: bool) -> TraceSetting | None:
        """The setting a request is traced under, or None when it is not traced."""
        key = model if model in self.models else ""
        sampler = self._samplers[key]
        if sampler.sample(propagated and sampler.setting.mode == "opentelemetry"):
            return sampler.setting
        return None

    def snapshot(self) -> dict[str, dict[str, Change]]:
        """What the protocol changed, by model ('' is the global setting): `restore` rebuilds
        these settings from it on another server (a worker of `--workers N`)."""
        return {
            "": self.global_setting.own_changes(),
            **{name: setting.own_changes() for name, setting in self.models.items()},
        }

    def restore(self, snapshot: Mapping[str, Mapping[str, Change]]) -> None:
        """Back to the --trace-config setting, then the snapshot's changes (sampling counters
        start again, as after any update)."""
        self.global_setting, self.models = self.default, {}
        self._samplers = {"": self._sampler("", self.default)}
        self.update("", snapshot.get("", {}))
        for model, changes in snapshot.items():
            if model:
                self.update(model, changes)

    def update(self, model: str, changes: Mapping[str, Change]) -> TraceSetting:
        """Apply a trace setting request (Triton's rules); the setting now in force."""
        if "trace_file" in changes:
            raise ServingError(
                ErrorKind.UNSUPPORTED,
                "trace file location can not be updated through network protocol",
            )
        new: dict[str, Any] = {}
        cleared: set[str] = set()
        for name, key in REQUEST_KEYS.items():
            if key not in changes:
                continue
            value = changes[key]
            if value is None or value == []:
                cleared.add(name)
            elif name == "level":
                new[name] = _levels(value)
            else:
                new[name] = _request_number(key, value)
        if model:
            self._update_model(model, new, cleared)
        else:
            self.global_setting = self._merged(self.global_setting, self.default, new, cleared)
            self._samplers[""] = self._sampler("", self.global_setting)
            for name, setting in list(self.models.items()):  # fields they follow change too
                self._update_model(name, {}, set(), setting)
        self.active = any(s.level for s in (self.global_setting, *self.models.values()))
        return self.setting(model)

    def _update_model(
        self,
        model: str,
        new: dict[str, Any],
        cleared: set[str],
        current: TraceSetting | None = None,
    ) -> None:
        current = current or self.models.get(model)
        merged = self._merged(current, self.global_setting, new, cleared)
        if not merged.specified:
            self.models.pop(model, None)
            self._samplers.pop(model, None)
            return
        self.models[model] = merged
        self._samplers[model] = self._sampler(model, merged)

    @staticmethod
    def _merged(
        current: TraceSetting | None,
        fallback: TraceSetting,
        new: dict[str, Any],
        cleared: set[str],
    ) -> TraceSetting:
        specified = {
            name
            for name in FIELDS
            if name not in cleared
            and (name in new or (current is not None and name in current.specified))
        }
        values = {name: new[name] if name in new else getattr(current, name) for name in specified}
        merged = dataclasses.replace(fallback, **values, specified=frozenset(specified))
        if merged.level and merged.invalid_reason:
            raise invalid(f"Attempting to set invalid trace setting :{merged.invalid_reason}")
        return merged


def _levels(value: Change) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise invalid("'trace_level' must be a list of strings")
    if "OFF" in items:
        if len(items) != 1:
            raise invalid("Expect only one trace level 'OFF' is specified")
        return frozenset()
    unknown = [i for i in items if i not in LEVELS]
    if unknown:
        raise invalid(f"unknown trace level {unknown[0]!r} (OFF, {', '.join(LEVELS)})")
    return frozenset(items)


def _request_number(key: str, value: Change) -> int:
    if isinstance(value, list):
        if len(value) != 1:
            raise invalid(f"expect only 1 value for '{key}'")
        value = value[0]
    if not isinstance(value, str):
        raise invalid(f"'{key}' must be a string")
    low, high = (-1, INT32_MAX) if key == "trace_count" else (0, UINT32_MAX)
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"Unable to parse '{key}', got: {value}") from None
    if key == "trace_count" and number < low:
        raise invalid(f"Unable to parse '{key}'. Expecting value >= {low}, got:{value}")
    if not low <= number <= high:
        raise invalid(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {value}"
        )
    return number
