"""The README's Embedding examples run as written, pasted into a script: the orchestrator on the local
backend, then the same program on `batchpilot.testing`'s in-memory backend and fake clock."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], re.S)


def _run(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    (folder / "logs").mkdir()
    (folder / "logs" / "a.log").write_text("hello\n")
    (folder / "logs" / "b c.log").write_text("world\n")
    (folder / "logs" / "empty.log").write_text("")
    (folder / "example.py").write_text(script)
    env = {**os.environ, "BATCHPILOT_HOME": str(folder / "home")}
    return subprocess.run(
        [sys.executable, "example.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def _done(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("done: ")]


def test_the_embedding_example_runs_on_the_local_backend(tmp_path: Path):
    example, _ = _python_blocks("Embedding")
    done = _run(example, tmp_path)
    assert done.returncode == 0, done.stderr
    # gzip -k on an empty file succeeds too: three tasks, each seen as it succeeded.
    assert len(_done(done.stdout)) == 3
    assert done.stdout.splitlines()[-1] == "True 3 ()"
    assert gzip.decompress((tmp_path / "compressed" / "b c.log.gz").read_bytes()) == b"world\n"


def test_the_in_memory_example_runs_the_same_program_without_a_command(tmp_path: Path):
    example, in_memory = _python_blocks("Embedding")
    # As the README says: its script first, and its orchestrator in main() instead of `Orchestrator()`.
    script, _, instead = in_memory.partition("# in main() above")
    opening = re.search(r"Orchestrator\(.+\) as orchestrator:", instead)
    assert opening is not None
    assert example.count("Orchestrator() as orchestrator:") == 1
    done = _run(script + example.replace("Orchestrator() as orchestrator:", opening.group(0)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_done(done.stdout)) == 2
    last = done.stdout.splitlines()[-1]
    assert last.startswith("False 2 (FailedTask(")
    assert "empty" in last
    assert gzip.decompress((tmp_path / "compressed" / "a.log.gz").read_bytes()) == b"hello\n"
    assert gzip.decompress((tmp_path / "compressed" / "b c.log.gz").read_bytes()) == b"world\n"
    assert not (tmp_path / "compressed" / "empty.log.gz").exists()
