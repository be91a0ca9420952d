"""Fuzzing every parser of user input: Azure settings (flags, environment, batchpilot.toml), workload files
and one-off commands, and the CLI's own value types.

One property everywhere: any input gives a value, or a `BatchpilotError` whose message is one non-empty line
without a traceback or the repr of an internal object. A value must also be usable: a workload that loads
renders its command. A few generated cases go through the real CLI, which must exit 1 or 2 with one line on
stderr. What the fuzzing found is pinned at the end as plain regression tests.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from batchpilot import cli
from batchpilot.config import SETTINGS, AzureSettings
from batchpilot.emulator import cli as emulator_cli
from batchpilot.errors import BatchpilotError, ConfigError
from batchpilot.spec import PoolSpec, StagedInput, Workload
from batchpilot.workload_file import (
    KEYS,
    MAX_DURATION,
    Defaults,
    load_workload,
    one_off_workload,
    read_workload_table,
)

T = TypeVar("T")

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example starts a CLI process (~0.4 s): a handful shows the wiring, the in-process tests the breadth.
THROUGH_THE_CLI = settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DEFAULTS = Defaults("w", PoolSpec("default-pool", dedicated_nodes=2))
INTERNAL_REPR = re.compile(
    r"Traceback|object at 0x|<class |<function |datetime\.|Path\(|Namespace\(|\w+(Error|Exception)\("
)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message.strip(), f"empty message from {type(exc).__name__}"
    assert len(message.splitlines()) == 1, message
    assert not INTERNAL_REPR.search(message), message
    return message


def value_or_error(call: Callable[[], T]) -> T | BatchpilotError:
    try:
        return call()
    except BatchpilotError as exc:
        one_line(exc)
        return exc


def value_or_argument_error(parse: Callable[[str], T], text: str) -> T | None:
    """An argparse type: argparse prints an ArgumentTypeError as one usage line; anything else escapes as a
    traceback (OverflowError) or a vague "invalid value" (ValueError)."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        one_line(exc)
        return None


def usable(result: Workload | BatchpilotError) -> None:
    """A workload that loads renders each task's command and outputs (that happens long after loading)."""
    if isinstance(result, Workload):
        values = StagedInput("a b.txt", "a b.txt", "0" * 32, 1, "a-b-12345678").template_values()
        result.template.render_command(values)
        result.template.render_outputs(values)


# --- TOML documents -----------------------------------------------------------------------------------------

# TOML text cannot hold lone surrogates; any other character may appear, escaped where TOML says so.
toml_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    toml_text,
    st.dates(),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.times(),
)
any_value = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(toml_text, inner, max_size=3),
    max_leaves=6,
)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf, nan and 1e+20 are TOML too
    if isinstance(value, str):
        escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in value)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value.isoformat())


def toml_document(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{toml_key(key)} = {toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def table(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of `fields`, each plausible or wrong, now and then with a key nobody knows; or no table at all."""
    known = st.fixed_dictionaries({}, optional=fields)
    stray = st.dictionaries(toml_text, any_value, max_size=1)
    return st.builds(
        lambda ours, theirs, mix: {**theirs, **ours} if mix else ours, known, stray, st.booleans()
    )


# --- workload files -----------------------------------------------------------------------------------------

template_piece = st.sampled_from(
    [
        "gzip -k ", "{input}", "{input_name}", "{stem}", "{output_dir}", "{task_id}", "{", "}", "{{", "}}",
        "{input:>10}", "{input:d}", "{input!r}", "{input!x}", "{bogus}", "{input[0]}", "{input.real}", "{0}",
        "{}", "{input:{stem}}", "{input:{bogus}}", " -o ", "/", "..", ".gz", "*", "?", "[", "\0", "\n",
    ]
)  # fmt: skip
template = st.lists(template_piece, max_size=6).map("".join) | toml_text
duration = st.one_of(
    st.integers(),
    st.floats(),
    st.from_regex(r"\s?[0-9]{1,22}(\.[0-9]{1,3})?\s?[smhd]?\s?", fullmatch=True),
    any_value,
)
count = st.integers(min_value=-2, max_value=2**63 - 1) | any_value
flag = st.booleans() | any_value
text = toml_text | any_value
inputs = st.one_of(
    st.sampled_from(["*.txt", "*", "in/*.txt", "none/*", "**/*", "/", ""]),
    table({"container": st.sampled_from(["raw-logs", "x", "UPPER"]) | text, "prefix": text}),
    text,
)
start_task = toml_text | table(
    {"command_line": text, "run_elevated": flag, "wait_for_success": flag, "max_retries": count}
)
pool = table(
    {
        "id": text,
        "vm_size": text,
        "image": table(dict.fromkeys(KEYS["workload.pool.image"], text)) | any_value,
        "node_agent_sku_id": text,
        "dedicated_nodes": count,
        "spot_nodes": count,
        "task_slots_per_node": count,
        "start_task": start_task | any_value,
    }
)
workload_tables = table(
    {
        "name": text,
        "inputs": inputs,
        "command": template | any_value,
        "outputs": st.lists(template, max_size=3) | template | any_value,
        "output_dir": st.sampled_from([".", "out", "../up", "/abs", "a/../..", ""]) | text,
        "download_to": text,
        "timeout": duration,
        "environment": st.dictionaries(toml_text, text, max_size=3) | any_value,
        "pool": pool | any_value,
        "constraints": table({"max_wall_clock": duration, "max_retries": count, "retention": duration})
        | any_value,
        "container": table({"image": text, "run_options": text}) | any_value,
        "cleanup": table(dict.fromkeys(KEYS["workload.cleanup"], flag)) | any_value,
    }
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workload file's folder with a few inputs for the globs to find; the file is rewritten per example."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "in").mkdir()
    for name in ("a.txt", "b.txt", "in/c.txt"):
        (root / name).write_text("x")
    return root


@FUZZ
@given(workload=workload_tables)
def test_any_workload_table_loads_or_is_one_clear_line(folder: Path, workload: dict[str, Any]):
    path = folder / "w.toml"
    path.write_text(toml_document({"workload": workload}), encoding="utf-8")
    usable(value_or_error(lambda: load_workload(path, DEFAULTS)))


@FUZZ
@given(text=st.text() | st.binary().map(lambda raw: raw.decode("latin-1")))
def test_any_text_as_a_workload_file_loads_or_is_one_clear_line(folder: Path, text: str):
    path = folder / "w.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    usable(value_or_error(lambda: load_workload(path, DEFAULTS)))
    value_or_error(lambda: read_workload_table(path))


@FUZZ
@given(data=st.binary())
def test_any_bytes_as_a_workload_file_load_or_are_one_clear_line(folder: Path, data: bytes):
    path = folder / "w.toml"
    path.write_bytes(data)
    value_or_error(lambda: load_workload(path, DEFAULTS))


@FUZZ
@given(command=template, outputs=st.lists(template, max_size=3))
def test_any_one_off_command_loads_or_is_one_clear_line(folder: Path, command: str, outputs: list[str]):
    usable(value_or_error(lambda: one_off_workload(command, tuple(outputs), folder, DEFAULTS)))


# --- Azure settings -----------------------------------------------------------------------------------------

KEY = "c2VjcmV0LWtleS1mb3ItZnV6emluZw=="
url = st.sampled_from(
    [
        "https://acct.westeurope.batch.azure.com", "http://127.0.0.1:8080", "https://h/", "http://[",
        "http://[::1", "https://h?x=1", "ftp://h", "https://", "https://h\n.x", "https://h\t", "http://h:99999",
        "http://h:port", "https://h/p#f",
    ]
) | st.text(max_size=40)  # fmt: skip
account_key = st.sampled_from([KEY, "", "not base64!", "====", "AA", "é"]) | st.text(max_size=40)
connection_string = st.lists(
    st.tuples(
        st.sampled_from(
            ["AccountName", "AccountKey", "BlobEndpoint", "DefaultEndpointsProtocol", "EndpointSuffix",
             "UseDevelopmentStorage", "SharedAccessSignature", "accountkey"]
        ) | st.text(max_size=8),
        st.sampled_from(["", "=", "=="]),
        st.sampled_from(["acct", KEY, "true", "https", "ftp", "core.windows.net", "http://[", "a b"])
        | st.text(max_size=20),
    ).map("".join)
).map(";".join)  # fmt: skip
SETTING_VALUES = {
    "batch.endpoint": url,
    "batch.account": st.text(max_size=20),
    "batch.access_key": account_key,
    "storage.connection_string": connection_string | st.text(max_size=40),
    "storage.account": st.text(max_size=20),
    "storage.key": account_key,
    "storage.blob_endpoint": url,
}
explicit_settings = st.fixed_dictionaries({}, optional=SETTING_VALUES) | st.dictionaries(
    st.text(max_size=20), st.none() | st.text(max_size=20), max_size=2
)
environments = st.fixed_dictionaries(
    {}, optional={name: SETTING_VALUES[s.key] for s in SETTINGS for name in s.env}
)


def settings_file(values: dict[str, Any], stray: dict[str, Any]) -> str:
    tables: dict[str, dict[str, Any]] = {"azure.batch": {}, "azure.storage": {}}
    for key, value in values.items():
        section, name = key.split(".")
        tables[f"azure.{section}"][name] = value
    for name, value in stray.items():
        tables.setdefault(name, {})["x"] = value
    return toml_document(tables)


settings_files = st.builds(
    settings_file,
    st.fixed_dictionaries({}, optional={key: value | any_value for key, value in SETTING_VALUES.items()}),
    st.dictionaries(st.sampled_from(["azure", "azure.other", "workload"]), any_value, max_size=1),
)


@FUZZ
@given(explicit=explicit_settings, env=environments, toml=st.none() | settings_files | st.text(max_size=60))
def test_any_azure_settings_load_or_are_one_clear_line(
    folder: Path, explicit: dict[str, str | None], env: dict[str, str], toml: str | None
):
    path = None
    if toml is not None:
        path = folder / "batchpilot.toml"
        path.write_bytes(toml.encode("utf-8", "surrogatepass"))
    result = value_or_error(lambda: AzureSettings.load(explicit, env=env, toml_path=path))
    if isinstance(result, AzureSettings):
        assert result.batch.endpoint.startswith(("http://", "https://"))
        assert result.storage.account_url.startswith(("http://", "https://"))


@FUZZ
@given(data=st.binary(max_size=80), env=environments)
def test_any_bytes_as_the_settings_file_load_or_are_one_clear_line(
    folder: Path, data: bytes, env: dict[str, str]
):
    path = folder / "batchpilot.toml"
    path.write_bytes(data)
    value_or_error(lambda: AzureSettings.load({}, env=env, toml_path=path))


# --- the CLI's value types ----------------------------------------------------------------------------------

numbers = st.one_of(
    st.text(max_size=12),
    st.integers().map(str),
    st.floats().map(repr),
    st.from_regex(r"-?[0-9]{1,400}(\.[0-9]+)?(e[0-9]{1,4})?[smhd]?", fullmatch=True),
    st.sampled_from(["inf", "nan", "-inf", "1e400", "Infinity", "1_000", " 5 ", "0x10", "", "-"]),
)


@FUZZ
@given(text=numbers)
def test_a_duration_flag_is_a_duration_in_range_or_one_clear_line(text: str):
    result = value_or_argument_error(cli._duration, text)
    assert result is None or timedelta(0) < result <= MAX_DURATION


@FUZZ
@given(text=numbers)
def test_a_count_flag_is_a_positive_number_or_one_clear_line(text: str):
    result = value_or_argument_error(cli._positive_int, text)
    assert result is None or result >= 1


@FUZZ
@given(text=st.tuples(numbers, st.sampled_from(["-", "", "--"]), numbers).map("".join) | numbers)
def test_a_simulated_duration_range_is_finite_or_one_clear_line(text: str):
    result = value_or_argument_error(emulator_cli._seconds_range, text)
    assert result is None or 0 <= result[0] <= result[1] < float("inf")


@FUZZ
@given(text=st.lists(st.sampled_from(["task.add", "pool.add", "bogus", " ", ""]) | st.text(max_size=8)))
def test_request_kinds_are_known_kinds_or_one_clear_line(text: list[str]):
    value_or_argument_error(emulator_cli._kinds, ",".join(text))


# --- through the real CLI -----------------------------------------------------------------------------------


def fits_a_command_line(text: str) -> bool:
    try:
        return b"\0" not in os.fsencode(text)
    except UnicodeError:
        return False


def run_cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI in a folder of its own (no batchpilot.toml) and return its one line of stderr."""
    cwd = folder / "cli"
    cwd.mkdir(exist_ok=True)
    base = {"PATH": os.defpath, "HOME": str(cwd), "BATCHPILOT_HOME": str(cwd / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "batchpilot.cli", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


@THROUGH_THE_CLI
@given(workload=workload_tables)
def test_the_cli_plans_a_generated_workload_or_says_what_is_wrong(folder: Path, workload: dict[str, Any]):
    path = folder / "cli.toml"
    path.write_text(toml_document({"workload": workload}), encoding="utf-8")
    expected = value_or_error(lambda: load_workload(path, Defaults("cli", DEFAULTS.pool)))
    assume(isinstance(expected, BatchpilotError))
    assert str(expected) in run_cli(folder, "plan", "--workload", str(path))


@THROUGH_THE_CLI
@given(text=numbers.filter(fits_a_command_line))
def test_the_cli_refuses_a_bad_timeout_in_one_line(folder: Path, text: str):
    assume(value_or_argument_error(cli._duration, text) is None)
    assert "--timeout" in run_cli(folder, "plan", "--timeout", text)


@THROUGH_THE_CLI
@given(env=environments.filter(lambda env: all(map(fits_a_command_line, env.values()))))
def test_the_cli_refuses_bad_azure_settings_in_one_line(folder: Path, env: dict[str, str]):
    expected = value_or_error(lambda: AzureSettings.load({}, env=env, toml_path=None))
    assume(isinstance(expected, BatchpilotError))
    assert str(expected) in run_cli(folder, "check", "--backend", "azure", env=env)


# --- what the fuzzing found ---------------------------------------------------------------------------------


def workload_error(folder: Path, body: str) -> str:
    path = folder / "found.toml"
    path.write_text("[workload]\n" + body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_workload(path, DEFAULTS)
    return one_line(caught.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # A key holding a line break (U+0085 is one to str.splitlines) split the message in two.
        ('"\\u0085" = []\n', r"workload.'\x85': unknown key"),
        ('command = "x"\ninputs = "*.txt"\nenvironment = { "A=B" = "1" }\n', "not a usable variable name"),
        # Passed loading, then raised KeyError or ValueError when the first task's command was rendered.
        ('command = "{input:{bogus}}"\n', "write placeholders as plain names"),
        ('command = "{input:{stem}}"\n', "write placeholders as plain names"),
        ('command = "{input!x}"\n', "write placeholders as plain names"),
        ('command = "x"\noutputs = ["{input:d}"]\n', "write placeholders as plain names"),
        # timedelta raised OverflowError or ValueError.
        ("command = 'x'\ninputs = '*.txt'\ntimeout = inf\n", "workload.timeout: must be a duration"),
        ("command = 'x'\ninputs = '*.txt'\ntimeout = nan\n", "workload.timeout: must be a duration"),
        ("command = 'x'\ninputs = '*.txt'\ntimeout = 9223372036854775807\n", "of at most 3650d"),
        ("command = 'x'\n[workload.constraints]\nretention = '99999999999d'\n", "of at most 3650d"),
        # tomllib raises a plain ValueError for an integer of more than 4300 digits.
        ("timeout = " + "1" * 5000 + "\n", "not valid TOML"),
        # The repr of a date (`datetime.date(1979, 5, 27)`) in the message.
        ("command = 'x'\n[workload.pool]\ndedicated_nodes = 1979-05-27\n", "at least 0, not a date"),
        ("command = 'x'\ninputs = '*.txt'\ncleanup.delete_job = 10:30:00\n", "true or false, not a time"),
        ('command = "gzip\\u0000 {input}"\n', "must not contain a NUL character"),
        ('command = "  "\n', "workload.command: must not be empty"),
    ],
)
def test_workload_files_the_fuzzing_broke(folder: Path, body: str, expected: str):
    assert expected in workload_error(folder, body)


def test_a_template_that_cannot_render_is_refused_for_one_off_commands(folder: Path):
    with pytest.raises(ConfigError, match="plain names"):
        one_off_workload("echo {input:{bogus}}", (), folder, DEFAULTS)


@pytest.mark.parametrize(
    "env",
    [
        {"AZURE_BATCH_ENDPOINT": "http://["},  # urlsplit raised ValueError
        {"AZURE_BATCH_ENDPOINT": "https://acct.batch.azure.com:99999"},
        # urlsplit drops the newline silently; the endpoint kept it, and so did every message naming it.
        {"AZURE_BATCH_ENDPOINT": "https://acct\n.batch.azure.com"},
        {"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey={KEY}"},
    ],
)
def test_azure_settings_the_fuzzing_broke(env: dict[str, str]):
    full = {"AZURE_BATCH_ENDPOINT": "https://acct.westeurope.batch.azure.com", "AZURE_BATCH_KEY": KEY}
    full |= {"AZURE_STORAGE_ACCOUNT": "store", "AZURE_STORAGE_KEY": KEY} | env
    with pytest.raises(ConfigError, match="malformed"):
        AzureSettings.load({}, env=full, toml_path=None)


def test_a_settings_file_that_is_not_utf8_is_one_line(folder: Path):
    path = folder / "latin1.toml"
    path.write_bytes(b"\x80")  # tomllib raised UnicodeDecodeError
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        AzureSettings.load({}, env={}, toml_path=path)


@pytest.mark.parametrize("text", ["inf", "NAN", "1e400", "86400000000000", "0", "-5", "3651d"])
def test_duration_flags_the_fuzzing_broke(text: str):
    # inf and 1e400 raised OverflowError (a traceback), NAN a ValueError ("invalid _duration value").
    with pytest.raises(argparse.ArgumentTypeError, match="is not a duration"):
        cli._duration(text)


def test_a_duration_flag_reads_like_a_workload_file_duration():
    assert cli._duration("1d") == timedelta(days=1)
    assert cli._duration("90") == timedelta(seconds=90)


def test_the_cli_says_one_line_for_an_infinite_timeout(folder: Path):
    assert "is not a duration" in run_cli(folder, "plan", "--timeout", "inf")


@pytest.mark.parametrize("text", ["INF", "1-inf", "1e400"])
def test_simulated_ranges_the_fuzzing_broke(text: str):
    with pytest.raises(argparse.ArgumentTypeError):
        emulator_cli._seconds_range(text)
