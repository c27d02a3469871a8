"""Parsing of LONGSONG_* values (`longsong.settings`): each parser takes (variable name, raw text) and raises
`SettingsError` naming the variable."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from longsong.settings import Settings, SettingsError, markdown_table, parse_days, parse_duration, variables


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("7d", 604800), ("3600s", 3600), ("3600", 3600),
                                          ("90m", 5400), ("1h30m", 5400), ("1w", 604800), (" 2D ", 172800)])
def test_parse_duration(text, seconds):
    assert parse_duration("LONGSONG_LINK_EXPIRY", text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["8d", "169h", "2w", "0", "0s", "", "abc", "-5m", "5 minutes", "1.5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(SettingsError, match="LONGSONG_LINK_EXPIRY"):
        parse_duration("LONGSONG_LINK_EXPIRY", text)


def test_parse_days():
    assert parse_days("X", "30") == 30 and parse_days("X", "30d") == 30
    assert parse_days("X", "off") is None and parse_days("X", "0") is None
    for bad in ("-1", "abc", "1.5"):
        with pytest.raises(SettingsError, match="X"):
            parse_days("X", bad)


def test_every_variable_has_its_default_when_unset_or_empty():
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({name: "  " for name in variables()}) == Settings()
    s = Settings()
    assert (s.gpu_queue, s.cpu_queue, s.engines, s.gpu_concurrency, s.heartbeat_timeout_s) == \
        ("longsong-gpu", "longsong-cpu", ("procedural",), 1, 60.0)
    assert s.storage_url == (s.home / "objects").as_uri() and s.web_ui == "http://localhost:8233"


def test_values_are_parsed():
    s = Settings.from_env({"LONGSONG_ENGINES": "procedural, musicgen,procedural", "LONGSONG_KEEP_SCRATCH": "yes",
                           "LONGSONG_GPU_CONCURRENCY": "3", "LONGSONG_LINK_EXPIRY": "90m",
                           "LONGSONG_RETENTION_DAYS": "30", "LONGSONG_SCRATCH_EXPIRY_DAYS": "off",
                           "LONGSONG_DEV_UI_PORT": "9000", "LONGSONG_HOME": "~/x", "LONGSONG_DEVICE": "CPU"})
    assert s.engines == ("procedural", "musicgen") and s.keep_scratch is True and s.gpu_concurrency == 3
    assert s.link_expiry == timedelta(minutes=90) and (s.retention_days, s.scratch_expiry_days) == (30, None)
    assert s.web_ui == "http://localhost:9000" and s.home == Path("~/x").expanduser() and s.device == "cpu"


@pytest.mark.parametrize("name,value,allowed", [
    ("LONGSONG_ENGINES", "procedural,suno", "allowed: procedural, musicgen"),
    ("LONGSONG_DEVICE", "tpu", "auto, cpu, cuda"),
    ("LONGSONG_QUANTIZE", "int4", "none, int8"),
    ("LONGSONG_KEEP_SCRATCH", "maybe", "1, 0"),
    ("LONGSONG_GPU_CONCURRENCY", "0", "between 1 and 64"),
    ("LONGSONG_CPU_CONCURRENCY", "two", "between 1 and 64"),
    ("LONGSONG_SHUTDOWN_GRACE_S", "-1", "between 0 and 3600"),
    ("LONGSONG_HEARTBEAT_TIMEOUT_S", "1", "between 5 and 3600"),
    ("LONGSONG_DEV_PORT", "70000", "between 1 and 65535"),
    ("LONGSONG_LINK_EXPIRY", "8d", "7 days"),
    ("LONGSONG_RETENTION_DAYS", "soon", "'off'"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_the_allowed_values(name, value, allowed):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert message.startswith(name) and allowed in message and "\n" not in message


def test_readme_configuration_table_is_the_settings_table():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "run `python -m longsong.settings` and paste it into README's Configuration"
    mentioned = set(re.findall(r"`(LONGSONG_[A-Z0-9_]+)", readme))
    assert mentioned <= set(variables()), f"README names settings the code does not have: {mentioned - set(variables())}"


def test_nothing_but_settings_reads_longsong_variables():
    root = Path(__file__).resolve().parent.parent
    readers = []
    for folder in ("longsong", "workflows", "activities"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            if path.name != "settings.py" and re.search(r"environ[^\n]*LONGSONG_|getenv\([^)]*LONGSONG_", text):
                readers.append(str(path.relative_to(root)))
    assert not readers
