"""Trace settings: --trace-config parsing, the extension's update rules (Triton's TraceManager:
model settings fall back to the global one field by field), and sampling."""

from __future__ import annotations

import pytest

from server.errors import ErrorKind, ServingError
from server.trace_settings import (
    OPENTELEMETRY_DEFAULTS,
    TraceConfigError,
    TraceSetting,
    TraceSettings,
    parse_trace_config,
)


def test_defaults_are_tritons() -> None:
    setting = parse_trace_config([])
    assert setting.as_json() == {
        "trace_level": ["OFF"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_file": "",
        "trace_mode": "triton",
    }


def test_comma_separated_global_settings_and_mode_sections() -> None:
    setting = parse_trace_config(
        [
            "rate=5,level=TIMESTAMPS,mode=opentelemetry",
            "count=7",
            "opentelemetry,url=http://collector:4318/v1/traces",
            "opentelemetry,resource=service.name=ferry-a",
            "opentelemetry,bsp_schedule_delay=100",
        ]
    )
    assert setting.level == {"TIMESTAMPS"} and setting.rate == 5 and setting.count == 7
    assert setting.as_json() == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "5",
        "trace_count": "7",
        "trace_mode": "opentelemetry",
        **OPENTELEMETRY_DEFAULTS,
        "url": "http://collector:4318/v1/traces",
        "bsp_schedule_delay": "100",
        "resource": "service.name=ferry-a",
    }


def test_triton_mode_file_settings() -> None:
    setting = parse_trace_config(
        ["level=TIMESTAMPS", "triton,file=/tmp/t.json", "triton,log-frequency=50"]
    )
    assert (setting.file, setting.log_frequency, setting.mode) == ("/tmp/t.json", 50, "triton")


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["rate=x"], "not a number"),
        (["count=-2"], "outside"),
        (["level=LOUD"], "unknown trace level"),
        (["mode=zipkin"], "unknown trace mode"),
        (["speed=3"], "unknown trace setting"),
        (["opentelemetry,colour=red"], "unknown opentelemetry trace setting"),
        (["level=TIMESTAMPS"], "trace file name is not given"),  # triton mode needs a file
        (["mode=opentelemetry,level=TENSORS"], "TENSORS"),
        (["rate"], "expected <setting>=<value>"),
    ],
)
def test_bad_trace_config_is_refused(values: list[str], fragment: str) -> None:
    with pytest.raises(TraceConfigError, match=fragment):
        parse_trace_config(values)


def otel() -> TraceSettings:
    return TraceSettings(parse_trace_config(["mode=opentelemetry"]))


def test_model_setting_follows_the_global_one_for_fields_it_does_not_set() -> None:
    settings = otel()
    settings.update("m", {"trace_rate": "7"})
    settings.update("", {"trace_level": ["TIMESTAMPS"], "trace_count": "3"})
    model = settings.setting("m")
    assert (model.rate, model.level, model.count) == (7, {"TIMESTAMPS"}, 3)
    assert settings.setting("other").rate == 1000  # models without a setting use the global
    settings.update("m", {"trace_rate": None})  # null clears the field back to the global
    assert "m" not in settings.models and settings.setting("m").rate == 1000


def test_global_null_goes_back_to_the_startup_value() -> None:
    settings = TraceSettings(parse_trace_config(["mode=opentelemetry", "rate=10"]))
    settings.update("", {"trace_rate": "3"})
    assert settings.setting().rate == 3
    settings.update("", {"trace_rate": None})
    assert settings.setting().rate == 10


def test_active_only_while_some_setting_traces() -> None:
    settings = otel()
    assert not settings.active
    settings.update("m", {"trace_level": ["TIMESTAMPS"]})
    assert settings.active
    settings.update("m", {"trace_level": ["OFF"]})
    assert not settings.active


@pytest.mark.parametrize(
    ("changes", "kind", "fragment"),
    [
        ({"trace_file": "x"}, ErrorKind.UNSUPPORTED, "can not be updated"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, ErrorKind.INVALID_ARG, "only one trace level"),
        ({"trace_level": ["LOUD"]}, ErrorKind.INVALID_ARG, "unknown trace level"),
        ({"trace_rate": 5}, ErrorKind.INVALID_ARG, "must be a string"),
        ({"trace_rate": "x"}, ErrorKind.INVALID_ARG, "Unable to parse 'trace_rate', got: x"),
        ({"trace_count": "-2"}, ErrorKind.INVALID_ARG, "Expecting value >= -1"),
        ({"trace_rate": ["1", "2"]}, ErrorKind.INVALID_ARG, "expect only 1 value"),
    ],
)
def test_bad_updates_are_refused_with_tritons_words(
    changes: dict[str, object], kind: ErrorKind, fragment: str
) -> None:
    settings = otel()
    with pytest.raises(ServingError, match=fragment) as caught:
        settings.update("", changes)  # type: ignore[arg-type]
    assert caught.value.kind == kind
    assert settings.setting().rate == 1000  # nothing changed


def test_triton_mode_refuses_tracing_without_a_file() -> None:
    settings = TraceSettings(TraceSetting())
    with pytest.raises(ServingError, match="trace file name is not given"):
        settings.update("", {"trace_level": ["TIMESTAMPS"]})


def test_rate_and_count_sampling() -> None:
    settings = TraceSettings(parse_trace_config(["mode=opentelemetry,rate=3,count=2"]))
    settings.update("", {"trace_level": ["TIMESTAMPS"]})
    sampled = [settings.sample("m", False) is not None for _ in range(12)]
    assert sampled == [False, False, True, False, False, True] + [False] * 6  # count ran out


def test_a_propagated_context_is_always_traced_while_the_level_is_on() -> None:
    settings = TraceSettings(parse_trace_config(["mode=opentelemetry,rate=0,level=TIMESTAMPS"]))
    assert settings.sample("m", False) is None  # rate 0: only propagated contexts
    assert settings.sample("m", True) is not None
    settings.update("", {"trace_level": ["OFF"]})
    assert settings.sample("m", True) is None


def test_a_new_setting_restarts_its_sampler() -> None:
    settings = TraceSettings(parse_trace_config(["mode=opentelemetry,rate=2,level=TIMESTAMPS"]))
    assert settings.sample("m", False) is None
    settings.update("m", {"trace_rate": "2"})  # a model setting of its own: counters from 0
    assert settings.sample("m", False) is None
    assert settings.sample("m", False) is not None


def test_a_snapshot_restores_the_same_settings_elsewhere() -> None:
    """What a worker of `--workers N` that starts later replays."""
    default = parse_trace_config(["level=TIMESTAMPS", "triton,file=/tmp/t.json"])
    settings = TraceSettings(default)
    settings.update("", {"trace_rate": "9", "trace_count": "3"})
    settings.update("mlp", {"trace_level": ["OFF"], "log_frequency": "2"})
    settings.update("cnn", {"trace_rate": "4"})
    settings.update("", {"trace_count": None})  # back to the startup value: not in the snapshot
    snapshot = settings.snapshot()
    assert snapshot == {
        "": {"trace_rate": "9"},
        "mlp": {"trace_level": ["OFF"], "log_frequency": "2"},
        "cnn": {"trace_rate": "4"},
    }
    elsewhere = TraceSettings(default)
    elsewhere.update("", {"trace_level": ["OFF"]})  # replaced, not merged
    elsewhere.update("resnet", {"trace_rate": "5"})
    elsewhere.restore(snapshot)
    assert elsewhere.snapshot() == snapshot
    for model in ("", "mlp", "cnn", "resnet"):
        assert elsewhere.setting(model) == settings.setting(model)
    assert elsewhere.active
    elsewhere.restore({})
    assert elsewhere.snapshot() == {"": {}} and elsewhere.setting("") == default
