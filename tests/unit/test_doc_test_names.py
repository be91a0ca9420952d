"""The docs name only tests that exist: every `test_...` a document names is a test file under tests/ or a
test function defined in one (and, when the document says `file.py::name`, defined in that file).

docs/reliability.md answers "how do you know?" with test names; a renamed or removed test leaves a claim
with nothing behind it. The test functions are read from the sources (ast), not collected."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/reliability.md", "docs/architecture.md", "docs/benchmarks.md")
NAMED = re.compile(r"(test_\w+\.py)?(?:::)?(test_\w+)?")


@functools.cache
def _defined() -> tuple[set[str], dict[str, set[str]]]:
    """The test files (names) and, for each test function, the files defining it."""
    files: set[str] = set()
    functions: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        files.add(path.name)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                functions.setdefault(node.name, set()).add(path.name)
    return files, functions


def _missing(text: str, files: set[str], functions: dict[str, set[str]]) -> list[str]:
    missing = []
    for match in NAMED.finditer(text):
        file, function = match.groups()
        if file is not None and file not in files:
            missing.append(file)
        if function is None or function.endswith(".py") or f"{function}.py" in files:
            continue
        if function not in functions:
            missing.append(function)
        elif file is not None and file not in functions[function]:
            missing.append(f"{file}::{function} (it is in {', '.join(sorted(functions[function]))})")
    return missing


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_document_names_exists(doc: str):
    files, functions = _defined()
    assert _missing((ROOT / doc).read_text(), files, functions) == []


def test_a_renamed_or_misplaced_test_is_caught():
    files, functions = {"test_a.py", "test_b.py"}, {"test_one": {"test_a.py"}}
    text = "test_a.py::test_one; test_b.py::test_one; test_gone; test_c.py; test_b.py"
    assert _missing(text, files, functions) == [
        "test_b.py::test_one (it is in test_a.py)",
        "test_gone",
        "test_c.py",
    ]
