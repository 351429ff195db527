"""Settings: flags beat ROOMD_* variables beat PROTOCOL.md's defaults."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from roomd.config import (
    DEMO_MAX_ROOMS,
    DEMO_MAX_ROOMS_PER_AID,
    DEMO_ROOM_TTL,
    Config,
    ConfigError,
    add_arguments,
    from_sources,
)


def load(*flags: str, **env: str) -> Config:
    """Return the config of `roomd serve FLAGS` with the environment `env` (nothing else)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_sources(parser.parse_args(list(flags)), env)


def test_defaults_are_the_protocol_defaults() -> None:
    """With no flags and no variables, every setting has PROTOCOL.md's default."""
    config = load()
    assert config == Config()
    assert (config.max_conns_per_ip, config.auth_timeout) == (5, 10.0)
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (25.0, 60.0)
    assert (config.room_ttl, config.max_members, config.max_rooms_per_conn) == (86_400.0, 256, 32)
    assert (config.rate, config.burst, config.max_frame, config.send_queue) == (
        10.0,
        30.0,
        131_072,
        1024,
    )
    assert config.trusted_proxies == () and config.allowed_origins == frozenset()
    assert not config.tls


@pytest.mark.parametrize(
    ("name", "flag_value", "env_value", "expected_env", "expected_flag"),
    [
        ("port", "9001", "9002", 9002, 9001),
        ("host", "0.0.0.0", "::", "::", "0.0.0.0"),
        ("data_dir", "/srv/a", "/srv/b", Path("/srv/b"), Path("/srv/a")),
        ("max_conns_per_ip", "0", "7", 7, 0),
        ("rate", "2.5", "3", 3.0, 2.5),
        ("burst", "5", "6.5", 6.5, 5.0),
        ("auth_timeout", "1", "2", 2.0, 1.0),
        ("heartbeat_interval", "1", "2", 2.0, 1.0),
        ("heartbeat_timeout", "3", "4", 4.0, 3.0),
        ("room_ttl", "60", "120", 120.0, 60.0),
        ("max_members", "2", "3", 3, 2),
        ("max_rooms_per_conn", "4", "5", 5, 4),
        ("max_frame", "2048", "4096", 4096, 2048),
        ("send_queue", "16", "32", 32, 16),
    ],
)
def test_flag_beats_variable_beats_default(
    name: str, flag_value: str, env_value: str, expected_env: object, expected_flag: object
) -> None:
    """Each setting reads --name, else ROOMD_NAME, else its default, converted to its type."""
    flag = "--" + name.replace("_", "-")
    variable = {f"ROOMD_{name.upper()}": env_value}
    assert getattr(load(**variable), name) == expected_env
    assert getattr(load(flag, flag_value, **variable), name) == expected_flag
    assert getattr(load(flag, flag_value), name) == expected_flag
    assert type(getattr(load(flag, flag_value), name)) is type(expected_flag)


def test_tls_needs_certificate_and_key_and_turns_wss_on() -> None:
    """--tls-cert with --tls-key (or their variables) makes the listener wss."""
    config = load("--tls-cert", "c.pem", ROOMD_TLS_KEY="k.pem")
    assert (config.tls_cert, config.tls_key, config.tls) == (Path("c.pem"), Path("k.pem"), True)


@pytest.mark.parametrize(
    ("flags", "env", "proxies"),
    [
        ([], {}, []),
        ([], {"ROOMD_TRUSTED_PROXIES": "10.0.0.0/8, ::1 ,,"}, ["10.0.0.0/8", "::1/128"]),
        (
            ["--trusted-proxy", "10.0.0.1", "--trusted-proxy", "fd00::/8"],
            {},
            ["10.0.0.1/32", "fd00::/8"],
        ),
        (
            ["--trusted-proxy", "192.168.0.0/16"],
            {"ROOMD_TRUSTED_PROXIES": "10.0.0.0/8"},
            ["192.168.0.0/16"],
        ),
    ],
)
def test_trusted_proxies_from_repeated_flags_or_a_comma_separated_variable(
    flags: list[str], env: dict[str, str], proxies: list[str]
) -> None:
    """--trusted-proxy repeats; ROOMD_TRUSTED_PROXIES is comma-separated; flags replace it."""
    config = load(*flags, **env)
    assert config.trusted_proxies == tuple(ipaddress.ip_network(p) for p in proxies)


@pytest.mark.parametrize(
    ("flags", "env", "origins"),
    [
        ([], {}, set()),
        (
            [],
            {"ROOMD_ALLOWED_ORIGINS": "https://a.example, https://b.example"},
            {"https://a.example", "https://b.example"},
        ),
        (
            ["--allowed-origin", "https://a.example", "--allowed-origin", "https://c.example"],
            {"ROOMD_ALLOWED_ORIGINS": "https://b.example"},
            {"https://a.example", "https://c.example"},
        ),
        ([], {"ROOMD_ALLOWED_ORIGINS": " , "}, set()),
    ],
)
def test_allowed_origins_from_repeated_flags_or_a_comma_separated_variable(
    flags: list[str], env: dict[str, str], origins: set[str]
) -> None:
    """--allowed-origin repeats; ROOMD_ALLOWED_ORIGINS is comma-separated; flags replace it."""
    assert load(*flags, **env).allowed_origins == frozenset(origins)


def test_an_empty_variable_is_used_as_given() -> None:
    """ROOMD_HOST='' is an explicit (empty) host, not a missing setting."""
    assert load(ROOMD_HOST="").host == ""


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ROOMD_PORT": "eighty"}, "ROOMD_PORT='eighty' is not a int"),
        ({"ROOMD_PORT": "80.5"}, "ROOMD_PORT"),
        ({"ROOMD_RATE": "fast"}, "ROOMD_RATE"),
        ({"ROOMD_MAX_MEMBERS": ""}, "ROOMD_MAX_MEMBERS"),
        ({"ROOMD_TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "--trusted-proxy"),
        ({"ROOMD_PORT": "65536"}, "--port"),
        ({"ROOMD_PORT": "-1"}, "--port"),
        ({"ROOMD_MAX_CONNS_PER_IP": "-1"}, "--max-conns-per-ip"),
        ({"ROOMD_MAX_FRAME": "1023"}, "--max-frame"),
        ({"ROOMD_TLS_CERT": "c.pem"}, "--tls-cert and --tls-key"),
        ({"ROOMD_TLS_KEY": "k.pem"}, "--tls-cert and --tls-key"),
    ],
)
def test_bad_variables_are_config_errors_naming_the_setting(
    env: dict[str, str], fragment: str
) -> None:
    """A variable that does not parse or is out of range raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="^.*" + fragment.replace("+", r"\+")):
        load(**env)


FLOAT_POSITIVE = [
    "rate",
    "burst",
    "auth_timeout",
    "heartbeat_interval",
    "heartbeat_timeout",
    "room_ttl",
]
INT_POSITIVE = ["max_members", "max_rooms_per_conn", "send_queue"]


@pytest.mark.parametrize(
    ("name", "value"),
    [(n, v) for n in FLOAT_POSITIVE for v in ("0", "-1", "nan", "-inf")]
    + [(n, v) for n in INT_POSITIVE for v in ("0", "-1")],
)
def test_settings_that_must_be_positive_refuse_zero_negative_and_nan(name: str, value: str) -> None:
    """Rates, sizes and timeouts must be positive numbers; the error names the flag."""
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag} must be positive"):
        load(f"{flag}={value}")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--port", "0"), ("--port", "65535"), ("--max-frame", "1024"), ("--max-conns-per-ip", "0")],
)
def test_values_at_the_edge_of_their_range_are_accepted(flag: str, value: str) -> None:
    """Port 0 (any free port), a 1 KiB frame limit and no per-IP limit are valid."""
    assert load(flag, value) is not None


def test_a_flag_that_does_not_parse_is_an_argparse_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A malformed flag is reported by argparse (exit status 2), naming the flag."""
    with pytest.raises(SystemExit) as info:
        load("--port", "eighty")
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_every_setting_has_a_flag_that_documents_its_variable_and_default() -> None:
    """--help names ROOMD_<NAME> and the default of each setting."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for variable in (
        "ROOMD_PORT",
        "ROOMD_MAX_CONNS_PER_IP",
        "ROOMD_TRUSTED_PROXIES",
        "ROOMD_ALLOWED_ORIGINS",
    ):
        assert variable in text
    assert "ROOMD_PORT, default 8765" in text and "ROOMD_RATE, default 10.0" in text


def test_demo_is_off_by_default_and_brings_a_finite_room_limit() -> None:
    """--demo (or ROOMD_DEMO=1) turns the demo on and --max-rooms to 100 unless it is given."""
    assert (load().demo, load().max_rooms) == (False, 0)
    assert DEMO_MAX_ROOMS == 100
    for config in (load("--demo"), load(ROOMD_DEMO="1"), load(ROOMD_DEMO="true")):
        assert (config.demo, config.max_rooms) == (True, DEMO_MAX_ROOMS)
    assert load("--demo", "--max-rooms", "7").max_rooms == 7
    assert load("--demo", ROOMD_MAX_ROOMS="5").max_rooms == 5
    assert load("--demo", "--max-rooms", "0").max_rooms == 0  # said outright: no limit
    assert load(ROOMD_DEMO="0").demo is False


def test_demo_brings_a_small_per_aid_room_limit_and_a_short_room_ttl() -> None:
    """--demo makes --max-rooms-per-aid 3 and --room-ttl 1 hour unless they are given."""
    assert (load().max_rooms_per_aid, load().room_ttl) == (64, 86_400.0)
    assert (DEMO_MAX_ROOMS_PER_AID, DEMO_ROOM_TTL) == (3, 3600.0)
    for config in (load("--demo"), load(ROOMD_DEMO="1")):
        assert (config.max_rooms_per_aid, config.room_ttl) == (
            DEMO_MAX_ROOMS_PER_AID,
            DEMO_ROOM_TTL,
        )
    given = load("--demo", "--max-rooms-per-aid", "10", "--room-ttl", "60")
    assert (given.max_rooms_per_aid, given.room_ttl) == (10, 60.0)
    from_env = load("--demo", ROOMD_MAX_ROOMS_PER_AID="5", ROOMD_ROOM_TTL="120")
    assert (from_env.max_rooms_per_aid, from_env.room_ttl) == (5, 120.0)
    assert (
        load("--demo", "--max-rooms-per-aid", "0").max_rooms_per_aid == 0
    )  # no limit, said outright
    # Each default stands alone: giving one leaves the others to the demo.
    only_ttl = load("--demo", "--room-ttl", "60")
    assert (only_ttl.max_rooms_per_aid, only_ttl.max_rooms) == (
        DEMO_MAX_ROOMS_PER_AID,
        DEMO_MAX_ROOMS,
    )


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--demo", "--no-api"], {}), ([], {"ROOMD_DEMO": "1", "ROOMD_NO_API": "1"})],
)
def test_demo_without_the_api_is_refused(flags: list[str], env: dict[str, str]) -> None:
    """--demo with --no-api is a ConfigError: the page and its tokens are served by the API."""
    with pytest.raises(ConfigError, match="--demo needs the server API"):
        load(*flags, **env)
