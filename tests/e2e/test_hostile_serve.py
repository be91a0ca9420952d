"""One bad input never stops the service (issue 16, item 6): `batchpilot serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.e2e.support import cli_command, cli_env, wait_for


def _unreadable(path: Path) -> None:
    """A file the service cannot read: no read permission, or (for root, whom permissions do not stop) a
    link to a file whose every read fails (EIO)."""
    if os.getuid() != 0:
        path.write_text("secret")
        path.chmod(0)
    else:
        path.symlink_to("/proc/self/mem")


def test_an_unreadable_input_among_good_ones_is_skipped_and_the_service_goes_on(
    tmp_path: Path, home: Path
) -> None:
    """The repro: an unreadable file arriving with five good ones stopped the whole service (an
    ExceptionGroup slipped past the batch's error handling); none of the five ran."""
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    log = tmp_path / "serve.log"
    args = [
        "serve", "--watch", str(watch), "--out", str(out), "--command", "/bin/cp {input} {stem}.copy",
        "--outputs", "{stem}.copy", "--nodes", "2",
    ]  # fmt: skip
    with log.open("w") as stdout, log.with_suffix(".err").open("w") as stderr:
        service = subprocess.Popen(
            cli_command(*args), env=cli_env(home), stdout=stdout, stderr=stderr, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_for(lambda: "service_watching" in log.read_text(), "watching", alive=service)
        for index in range(5):
            (watch / f"good{index}.txt").write_text(f"{index}\n")
        _unreadable(watch / "bad.txt")
        copies = lambda: sorted(path.name for path in out.glob("*.copy")) if out.exists() else []  # noqa: E731
        wait_for(lambda: len(copies()) == 5, "the five good inputs fetched", alive=service)
        # The service goes on: a later input runs too.
        (watch / "later.txt").write_text("later\n")
        wait_for(lambda: "later.copy" in copies(), "a later input fetched", alive=service)
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
    assert service.returncode == 0, log.with_suffix(".err").read_text()
    assert copies() == [*(f"good{index}.copy" for index in range(5)), "later.copy"]
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    skipped = [event for event in events if event.get("event") == "service_input_skipped"]
    assert [event["input"] for event in skipped] == ["bad.txt"]
    assert "cannot read" in skipped[0]["error"]
    assert not [event for event in events if event.get("event") == "service_batch_failed"]
    assert "Traceback" not in log.with_suffix(".err").read_text()


def test_inputs_whose_names_meet_are_one_skipped_input_not_a_failed_batch(tmp_path: Path, home: Path) -> None:
    """Two inputs differing only in case failed the service's whole batch (a plain ConfigError): the good
    inputs in it waited until they changed. Now the later of the two is reported and left out."""
    watch, out = tmp_path / "watch", tmp_path / "out"
    watch.mkdir()
    for index in range(3):
        (watch / f"good{index}.txt").write_text(f"{index}\n")
    (watch / "clash.txt").write_text("lower\n")
    (watch / "CLASH.txt").write_text("upper\n")
    log = tmp_path / "serve.log"
    args = [
        "serve", "--watch", str(watch), "--out", str(out), "--command", "/bin/cp {input} {stem}.copy",
        "--outputs", "{stem}.copy", "--nodes", "2",
    ]  # fmt: skip
    with log.open("w") as stdout, log.with_suffix(".err").open("w") as stderr:
        service = subprocess.Popen(
            cli_command(*args), env=cli_env(home), stdout=stdout, stderr=stderr, text=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    copies = lambda: sorted(path.name for path in out.glob("*.copy")) if out.exists() else []  # noqa: E731
    try:
        wait_for(lambda: len(copies()) == 4, "the good inputs and one of the two fetched", alive=service)
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=120)
    finally:
        if service.poll() is None:
            service.kill()
    assert service.returncode == 0, log.with_suffix(".err").read_text()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [skipped] = [event for event in events if event.get("event") == "service_input_skipped"]
    assert skipped["input"] in ("clash.txt", "CLASH.txt")
    assert "would land on the same name" in skipped["error"]
    kept = ({"clash.txt", "CLASH.txt"} - {skipped["input"]}).pop()
    assert copies() == sorted([*(f"good{index}.copy" for index in range(3)), kept.replace(".txt", ".copy")])
    assert not [event for event in events if event.get("event") == "service_batch_failed"]
