"""The observability settings: flags and KEYSPAN_* variables of every process, validated."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyspan.services.cli import cli
from keyspan.services.config import ProcessConfig, ServeConfig
from keyspan.storage.errors import ConfigError


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"metrics_address": "9100"}, "metrics_address"),
        ({"metrics_address": "host:port"}, "metrics_address"),
        ({"otlp_endpoint": "collector"}, "otlp_endpoint"),
        ({"otlp_endpoint": "http://collector"}, "otlp_endpoint"),
        ({"trace_sample_ratio": 1.5}, "trace_sample_ratio"),
        ({"trace_sample_ratio": -0.1}, "trace_sample_ratio"),
        ({"sentry_dsn": "not a url"}, "sentry_dsn"),
        ({"sentry_dsn": "http://127.0.0.1:9000/1"}, "sentry_dsn"),
        ({"sentry_dsn": "http://key@127.0.0.1:9000/project"}, "project id"),
        ({"sentry_environment": " "}, "sentry_environment"),
    ],
)
def test_bad_observability_settings_are_rejected(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProcessConfig(**settings).validate()


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"metrics_address": "0.0.0.0:9100", "otlp_endpoint": "127.0.0.1:4317", "trace_sample_ratio": 0.01},
        {"otlp_endpoint": "http://otel-collector.monitoring:4317", "trace_sample_ratio": 0.0},
        {"sentry_dsn": "https://abc123@o1.ingest.sentry.io/42", "sentry_environment": "staging"},
    ],
)
def test_good_observability_settings_pass(settings: dict) -> None:
    assert ProcessConfig(**settings).validate()


def test_max_partition_series_is_bounded() -> None:
    with pytest.raises(ConfigError, match="max_partition_series"):
        ServeConfig(max_partition_series=-1).validate()


def test_every_observability_setting_is_a_flag_with_an_env_variable() -> None:
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for flag in (
        "metrics-address",
        "otlp-endpoint",
        "trace-sample-ratio",
        "sentry-dsn",
        "sentry-environment",
        "max-partition-series",
    ):
        assert f"--{flag}" in text
        assert "KEYSPAN_" + flag.upper().replace("-", "_") in text


def test_a_bad_setting_from_the_environment_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["serve"], env={"KEYSPAN_TRACE_SAMPLE_RATIO": "2"})
    assert result.exit_code == 2 and "trace_sample_ratio" in result.output
