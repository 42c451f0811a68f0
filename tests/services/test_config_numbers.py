"""Number settings of every process: NaN and infinity are refused, and so are values past a
sane bound, naming the setting (exit 2 at start-up)."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from click.testing import CliRunner

from keyspan.services.cli import cli
from keyspan.services.config import ControlConfig, GatewayConfig, NodeConfig, ServeConfig
from keyspan.storage.errors import ConfigError

CONFIGS = [ServeConfig, NodeConfig, GatewayConfig, ControlConfig]
FLOAT_SETTINGS = sorted(
    {(cls, f.name) for cls in CONFIGS for f in fields(cls) if isinstance(f.default, float)},
    key=lambda c: (c[0].__name__, c[1]),
)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("cls", "name"), FLOAT_SETTINGS, ids=[f"{c.__name__}.{n}" for c, n in FLOAT_SETTINGS]
)
def test_a_number_setting_that_is_not_finite_is_refused_naming_it(cls: type, name: str, bad: float) -> None:
    # NaN passed `sweep_interval_s <= 0`, and asyncio.sleep(nan) returns at once: the
    # sweeper then spun at ~94% CPU. inf and 1e300 turned background sweeps off.
    with pytest.raises(ConfigError, match=rf"^{name}: {bad} must be a finite number$"):
        cls(**{name: bad}).validate()


@pytest.mark.parametrize(
    ("cls", "settings", "message"),
    [
        (
            ServeConfig,
            {"sweep_interval_s": 1e300},
            r"sweep_interval_s: 1e\+300 must be between 0.1 and 86400",
        ),
        (ServeConfig, {"sweep_interval_s": 0.0}, "sweep_interval_s: 0.0 must be between 0.1"),
        # a microsecond passed "above 0", and the sweeper then spun at 55% of a core, idle
        (ServeConfig, {"sweep_interval_s": 1e-6}, "sweep_interval_s: 1e-06 must be between 0.1"),
        (ServeConfig, {"shutdown_grace_s": 1e9}, "shutdown_grace_s: 1000000000.0 must be between 0 and 3600"),
        (NodeConfig, {"sync_timeout_s": -1.0}, "sync_timeout_s: -1.0 must be between 0 and 3600"),
        (GatewayConfig, {"call_timeout_s": 0.0}, "call_timeout_s: 0.0 must be above 0 and at most 3600"),
    ],
)
def test_a_number_setting_past_its_bound_is_refused_naming_it(
    cls: type, settings: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**settings).validate()


def test_serve_refuses_a_nan_setting_with_exit_2() -> None:
    result = CliRunner().invoke(cli, ["serve", "--sweep-interval-s", "nan"])
    assert result.exit_code == 2 and "sweep_interval_s: nan must be a finite number" in result.output


@pytest.mark.parametrize("address", [" 127.0.0.1:7420", "127.0.0.1 :7420", "localhost", ":7420"])
def test_a_listen_address_that_is_not_host_port_is_refused(address: str) -> None:
    # A stray space was taken, then refused at listen time as "in use".
    with pytest.raises(ConfigError, match=r"^address: .* is not HOST:PORT$"):
        ServeConfig(address=address).validate()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("[127.0.0.1]:7420", r"'127\.0\.0\.1' in '\[127\.0\.0\.1\]:7420' is not an IPv6 address"),
        ("::1:7420", r"'::1:7420' is not HOST:PORT \(.*IPv6 address in brackets: \[::1\]:7420\)"),
        ("[::1:7420", r"'\[::1:7420' is not HOST:PORT \("),
    ],
)
def test_a_listen_address_with_a_malformed_host_is_refused_naming_it(address: str, why: str) -> None:
    """gRPC refused these only when it came to listen: its own log line, then "in use"."""
    with pytest.raises(ConfigError, match=rf"^address: {why}"):
        ServeConfig(address=address).validate()


def test_an_ipv6_listen_address_in_brackets_is_taken() -> None:
    ServeConfig(address="[::1]:7420").validate()


@pytest.mark.parametrize("control", ["dns:///control.keyspan.svc:7400", "ipv4:10.0.0.1:7400"])
def test_a_control_target_may_carry_a_grpc_scheme(control: str) -> None:
    """The listen addresses' host checks refused these --control targets, which gRPC dials."""
    from keyspan.services.config import NodeConfig

    NodeConfig(control=control, id="n1").validate()


@pytest.mark.parametrize("port", ["\u00b2", "\u0667\u0664"])  # a superscript 2; Arabic-Indic 74
def test_a_port_in_digits_other_than_ascii_is_refused_naming_it(port: str) -> None:
    """str.isdigit() takes them, then int() raised ValueError: a traceback and exit 1."""
    with pytest.raises(ConfigError, match=r"^address: .* is not HOST:PORT$"):
        ServeConfig(address=f"127.0.0.1:{port}").validate()


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_every_number_setting_has_a_range_that_help_shows(cls: type) -> None:
    numbers = [
        f for f in fields(cls) if isinstance(f.default, int | float) and not isinstance(f.default, bool)
    ]
    assert numbers and all("bounds" in f.metadata for f in numbers), [
        f.name for f in numbers if "bounds" not in f.metadata
    ]
    command = {ServeConfig: "serve", NodeConfig: "node", GatewayConfig: "gateway", ControlConfig: "control"}[
        cls
    ]
    shown = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=1000).output.split())
    for f in numbers:
        assert f"Range: {f.metadata['bounds'].says()}." in shown, f.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,0x", r"split_points: '0x' is an empty key"),  # exit 4, naming no setting, even on an old data dir
        ("a,0xZZ", r"split_points: '0xZZ' is not valid hex"),
        ("a,\udcff", r"split_points: b'\\xff' is not UTF-8 text; give it as hex"),  # was "not valid hex"
    ],
)
def test_a_bad_split_point_is_refused_naming_the_setting(text: str, message: str) -> None:
    for cls in (ServeConfig, ControlConfig):
        with pytest.raises(ConfigError, match=message):
            cls(split_points=text).validate()
