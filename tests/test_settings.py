"""Tests broker URL resolution, password masking, URL parsing and the setting validators."""

from __future__ import annotations

import math

import pytest

from workers import settings
from workers.settings import (
    DEFAULT_URL,
    URL_ENV,
    DispatchMode,
    SettingsError,
    check_ack,
    check_prefetch,
    check_queue,
    check_seconds_per_dot,
    check_url,
    mask_url,
    resolve_url,
    scrub,
    url_is_default,
    url_parts,
    warn_password_in_argv,
)

FLAG_URL = "amqp://flag:flagpw@flaghost:5673/flagvh"
ENV_URL = "amqp://env:envpw@envhost:5674/envvh"


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, ENV_URL)
    assert resolve_url(FLAG_URL) == FLAG_URL
    assert not url_is_default(FLAG_URL)


def test_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, ENV_URL)
    assert resolve_url(None) == ENV_URL
    assert resolve_url("") == ENV_URL, "an empty --url is no choice"
    assert not url_is_default(None)


def test_default_when_nothing_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_url(None) == DEFAULT_URL == "amqp://guest:guest@localhost:5672/%2F"
    assert url_is_default(None)
    monkeypatch.setenv(URL_ENV, "")
    assert resolve_url(None) == DEFAULT_URL, "an empty AMQP_URL is no choice"
    assert url_is_default("")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
        ("amqps://u:s3cretPW@h/vh", "amqps://u:***@h/vh"),
        ("amqp://u:p%40ss%2Fw@h:1/%2F", "amqp://u:***@h:1/%2F"),
        ("amqp://u:p:a:ss@h/", "amqp://u:***@h/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),
        ("amqp://u:@h/", "amqp://u:***@h/"),
        ("amqp://h:5672/%2F", "amqp://h:5672/%2F"),
        ("amqp://user@h/", "amqp://user@h/"),
        ("amqp://localhost", "amqp://localhost"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_in_longer_text_masks_each_url() -> None:
    text = "tried amqp://a:pw1@h1/ then AMQP://b:pw2@h2:5673/x, both failed"
    assert mask_url(text) == "tried amqp://a:***@h1/ then AMQP://b:***@h2:5673/x, both failed"


def test_scrub_hides_the_password_anywhere() -> None:
    url = "amqp://guest:s3cretPW@127.0.0.1:1/%2F"
    text = f"connect {url} failed: server said 's3cretPW' is wrong"
    cleaned = scrub(text, url)
    assert "s3cretPW" not in cleaned
    assert "amqp://guest:***@127.0.0.1:1/%2F" in cleaned


def test_scrub_decodes_percent_encoded_passwords() -> None:
    url = "amqp://guest:p%40ssword@h/"
    assert "p@ssword" not in scrub("pika said p@ssword", url)


def test_scrub_without_url_still_masks_urls() -> None:
    assert scrub("at amqp://u:topsecret@h/ now") == "at amqp://u:***@h/ now"


def test_scrub_leaves_very_short_passwords_alone_in_prose() -> None:
    """A two-letter password would blank out ordinary words; URLs are still masked."""
    url = "amqp://u:an@h/"
    assert scrub("an error at amqp://u:an@h/", url) == "an error at amqp://u:***@h/"


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "password", "vhost"),
    [
        ("amqp://guest:guest@localhost:5672/%2F", "localhost", 5672, "guest", "guest", "/"),
        ("amqp://guest:guest@localhost:5672/", "localhost", 5672, "guest", "guest", "/"),
        ("amqp://guest:guest@localhost:5672", "localhost", 5672, "guest", "guest", "/"),
        ("amqp://u%40x:p%2Fw@h.example/my%2Fvh", "h.example", 5672, "u@x", "p/w", "my/vh"),
        ("amqps://u:p@h/vh", "h", 5671, "u", "p", "vh"),
        ("amqp://h", "h", 5672, "guest", "guest", "/"),
        ("amqp://u:p@h:notaport/", "h", 5672, "u", "p", "/"),
        ("amqp://u:p@[::1]:5673/v", "::1", 5673, "u", "p", "v"),
    ],
)
def test_url_parts(url: str, host: str, port: int, user: str, password: str, vhost: str) -> None:
    assert url_parts(url) == settings.UrlParts(host, port, user, password, vhost)


@pytest.mark.parametrize("value", [0, 1, 2, 250, 65535])
def test_prefetch_accepts_broker_range(value: int) -> None:
    assert check_prefetch(value) == value


@pytest.mark.parametrize("value", [-1, -100, 65536, 70000])
def test_prefetch_rejects_out_of_range(value: int) -> None:
    with pytest.raises(SettingsError, match=r"--prefetch must be between 0 .* and 65535") as info:
        check_prefetch(value)
    assert str(value) in str(info.value)


@pytest.mark.parametrize("value", ["manual", "auto", "none"])
def test_ack_accepts_the_three_modes(value: str) -> None:
    assert check_ack(value) == value


@pytest.mark.parametrize("value", ["", "Manual", "AUTO", "no", "manual ", "ack"])
def test_ack_rejects_anything_else(value: str) -> None:
    with pytest.raises(SettingsError, match="--ack must be one of manual, auto, none"):
        check_ack(value)


@pytest.mark.parametrize("value", [0.0, 0.05, 1.0, 3599.0])
def test_seconds_per_dot_accepts(value: float) -> None:
    assert check_seconds_per_dot(value) == value


@pytest.mark.parametrize("value", [-1.0, -0.001, 3600.0, math.inf, -math.inf, math.nan])
def test_seconds_per_dot_rejects(value: float) -> None:
    with pytest.raises(SettingsError, match="--seconds-per-dot must be 0 or more"):
        check_seconds_per_dot(value)


def test_settings_errors_are_value_errors_of_one_sentence() -> None:
    """argparse type functions turn ValueError into a usage error, so this must stay a ValueError."""
    with pytest.raises(ValueError) as info:
        check_prefetch(-1)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (DispatchMode(0, "manual"), "round-robin"),
        (DispatchMode(1, "manual"), "fair dispatch"),
        (DispatchMode(5, "none"), "prefetch 5, no ack (forgotten)"),
        (DispatchMode(1, "auto"), "prefetch ignored"),
    ],
)
def test_mode_descriptions(mode: DispatchMode, words: str) -> None:
    assert words in mode.describe()


def test_default_mode_is_fair_dispatch_with_manual_ack() -> None:
    assert DispatchMode() == DispatchMode(prefetch=1, ack="manual")


def test_password_in_argv_warns(capsys: pytest.CaptureFixture[str]) -> None:
    warn_password_in_argv("amqp://u:s3cretPW@h/")
    err = capsys.readouterr().err
    assert "visible in the process list" in err and "AMQP_URL" in err
    assert "s3cretPW" not in err


@pytest.mark.parametrize("flag", [None, "", "amqp://h/", "amqp://user@h/"])
def test_no_password_in_argv_no_warning(capsys: pytest.CaptureFixture[str], flag: str | None) -> None:
    warn_password_in_argv(flag)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "url",
    [
        DEFAULT_URL,
        "amqp://localhost",
        "amqps://u:p@h/vh",
        "amqp://u:p@ss@h/",  # a raw "@" in the password: the host is after the last one, as pika reads it
        "amqp://u:p:a:ss@h/",
        "amqp://u:p%40ss%2Fw%3F%23@h:1/%2F",
        "amqp://u:p@[::1]:5673/v",
        "amqp://h/?heartbeat=5",
    ],
)
def test_check_url_accepts_what_pika_reads_as_meant(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("amqp://u1:p@ss:w/rd%@host/", "p@ss:w/rd%"),  # the issue's: host "ss", port "w" to urllib
        ("amqp://u1:sec/ret@host/", "sec/ret"),
        ("amqp://u1:123/456@host/", "123/456"),  # host "u1", port 123: it would have connected there
        ("amqp://u1:pa#ss@host/", "pa#ss"),
        ("amqp://u1:pa?ss@host/", "pa?ss"),
        ("amqp://u1:pa[ss@host/", "pa[ss"),
        ("amqp://u1:pass@host:99999/", None),
        ("amqp://u1:pass@host:port/", None),
    ],
)
def test_check_url_refuses_a_url_cut_short_without_quoting_it(url: str, secret: str | None) -> None:
    with pytest.raises(SettingsError) as info:
        check_url(url, "AMQP_URL")
    message = str(info.value)
    assert message.startswith("The broker URL in AMQP_URL cannot be read: its port must be a number"), message
    assert "percent-encoded (/ as %2F" in message and message.endswith(".") and "\n" not in message
    if secret:
        runs = {secret[i:j] for i in range(len(secret)) for j in range(i + 3, len(secret) + 1)}
        assert not [run for run in runs if run in message], message


@pytest.mark.parametrize("url", ["localhost:5672", "http://h/", "guest:guest@localhost", "h"])
def test_check_url_wants_an_amqp_scheme(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^The broker URL in --url must begin with amqp:// or amqps://\.$"):
        check_url(url, "--url")


def test_check_url_names_a_query_option_pika_refuses() -> None:
    with pytest.raises(SettingsError, match=r"has an option pika cannot use: Unknown URL parameter: 'nosuch'\.$"):
        check_url("amqp://u:pw@h/?nosuch=1")


def test_resolve_url_checks_the_url_it_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, "amqp://u:a/b@h/")
    with pytest.raises(SettingsError, match="in AMQP_URL"):
        resolve_url(None)
    with pytest.raises(SettingsError, match="in --url"):
        resolve_url("amqp://u:a/b@h/")


@pytest.mark.parametrize("name", ["task_queue", "x", "é" * 127 + "x", "q" * 255, "[/] odd name"])
def test_check_queue_takes_up_to_255_bytes(name: str) -> None:
    assert check_queue(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("é" * 128, "--queue must be at most 255 bytes in UTF-8 (the broker's limit), not 256."),  # 128 characters
        ("q" * 300, "--queue must be at most 255 bytes in UTF-8 (the broker's limit), not 300."),
        ("", "--queue must not be empty: the broker would make up a different name for each program that declares it."),
        ("bad\udcff", "--queue must be text in UTF-8."),  # argv bytes that were not UTF-8
    ],
)
def test_check_queue_refuses_what_the_broker_cannot_take(name: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        check_queue(name)
    assert str(info.value) == message


@pytest.mark.parametrize("url", ["amqp://u1:p\tQz9@host/", "amqp://u1:pa\tss/Qz9@host/", "amqp://h/v\nh"])
def test_check_url_refuses_control_characters_urllib_would_drop(url: str) -> None:
    """urllib drops tabs and line breaks: "p<tab>Qz9" would have logged in as "pQz9" (and crashed the check)."""
    with pytest.raises(SettingsError) as info:
        check_url(url, "--url")
    message = str(info.value)
    assert message.startswith("The broker URL in --url holds a control character") and "Qz9" not in message


def test_check_url_takes_surrounding_whitespace_as_urllib_does() -> None:
    assert check_url("amqp://h/\n") == "amqp://h/\n"
