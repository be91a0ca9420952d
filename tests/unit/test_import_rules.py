"""The layers of docs/architecture.md, checked over the imports of every file under src/.

Each module belongs to one layer (a module no layer claims fails the test: place it, in the table below and in
docs/architecture.md). Every import (at the top, inside a function, or under `if TYPE_CHECKING:`: a
dependency is a dependency) is resolved to an absolute module name and checked against the rules; a
forbidden import fails with the file, the line and the rule it breaks. Separately, `import batchpilot`,
`batchpilot.metrics` and `batchpilot.service` must load no Azure SDK module, checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "batchpilot"

# The layers, by module prefix (a prefix covers the module and everything under it).
LAYERS: dict[str, tuple[str, ...]] = {
    # Pure records and decisions: no I/O beyond a clock behind a protocol, no backend, no face.
    "core": (
        "errors",
        "records",
        "spec",
        "events",
        "bus",
        "clock",
        "backoff",
        "attempts",
        "tasks",
        "recorder",
        "request_tally",
        "images",
        "redact",
        "text",
        "concurrency",
        "monitor",  # the package and monitor.state; the poller is below
    ),
    # Small helpers that touch the machine: files, settings from the environment, logging's setup.
    "support": ("files", "config", "logging"),
    # The orchestration: drives a backend through the protocols of backends/base.py.
    "engine": ("engine", "staging", "submit", "monitor.poller", "subscribers"),
    # Adapters: the protocols, the local machine, Azure, and the public in-memory double.
    "backends": ("backends", "testing"),
    # What users and embedders touch.
    "faces": (
        "",  # the package itself: batchpilot/__init__.py
        "cli",
        "cli_workload",
        "cli_errors",
        "cli_report",
        "cli_status",
        "plan",
        "workload_file",
        "workloads",
        "service",
        "metrics",
        "report",
    ),
    # The Batch emulator: a stand-in service for tests, built on the same records.
    "emulator": ("emulator",),
}

AZURE_SDK = ("azure",)
HTTP_SERVER = ("aiohttp",)


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # absolute: batchpilot.x.y, azure.batch, ...


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def own(name: str) -> str | None:
    """`batchpilot.x.y` -> `x.y`, `batchpilot` -> ``; None for another distribution's module."""
    if name == PACKAGE:
        return ""
    if name.startswith(PACKAGE + "."):
        return name[len(PACKAGE) + 1 :]
    return None


def exists(module: str) -> bool:
    relative = Path(*module.split("."))
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative / "__init__.py").is_file()


def imports_of(path: Path) -> Iterator[Import]:
    """Every import in the file, relative ones resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module_name(path)
    package = module if is_package(path) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` imports the submodule x when there is one.
            submodules = [
                f"{target}.{alias.name}" for alias in node.names if exists(f"{target}.{alias.name}")
            ]
            for name in submodules or [target]:
                yield Import(path, node.lineno, name)


def layer_of(module: str) -> str | None:
    """The layer whose longest prefix matches `module` (a path inside batchpilot, `` for the package)."""
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            matches = (
                module == prefix if prefix == "" else module == prefix or module.startswith(prefix + ".")
            )
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@dataclass(frozen=True)
class Rule:
    name: str
    applies_to: Callable[[str], bool]  # the importing module (inside batchpilot)
    forbids: Callable[[str], bool]  # the imported module (absolute)


def _own_layer(name: str) -> str | None:
    inside = own(name)
    return None if inside is None else layer_of(inside)


def _in_layer(*layers: str) -> Callable[[str], bool]:
    return lambda module: layer_of(module) in layers


RULES = (
    Rule(
        "the core imports only the core (no backend, no subscriber, no engine, no face, no emulator)",
        _in_layer("core"),
        lambda name: own(name) is not None and _own_layer(name) != "core",
    ),
    Rule(
        "the core does no network I/O: no azure.*, no aiohttp",
        _in_layer("core"),
        lambda name: under(name, *AZURE_SDK, *HTTP_SERVER),
    ),
    Rule(
        "support modules import only the core and each other",
        _in_layer("support"),
        lambda name: own(name) is not None and _own_layer(name) not in ("core", "support"),
    ),
    Rule(
        "the engine names no concrete backend: only the protocols of backends/base.py",
        _in_layer("engine"),
        lambda name: (
            (inside := own(name)) is not None
            and _own_layer(name) == "backends"
            and not under(inside, "backends.base")
        ),
    ),
    Rule(
        "the engine imports no face and no emulator",
        _in_layer("engine"),
        lambda name: _own_layer(name) in ("faces", "emulator"),
    ),
    Rule(
        "backends import nothing from the CLI, service, metrics, the engine, a subscriber or the emulator",
        _in_layer("backends"),
        lambda name: _own_layer(name) in ("faces", "engine", "emulator"),
    ),
    Rule(
        "the emulator imports nothing from the CLI, the engine, the service or another face",
        _in_layer("emulator"),
        lambda name: _own_layer(name) in ("faces", "engine"),
    ),
    Rule(
        "the Azure SDK is imported only by backends/azure and the emulator",
        lambda module: not under(module, "backends.azure", "emulator"),
        lambda name: under(name, *AZURE_SDK),
    ),
    Rule(
        "`import batchpilot`, metrics and service stay free of the Azure adapter (it loads the SDK)",
        lambda module: module == "" or under(module, "metrics", "service"),
        lambda name: (inside := own(name)) is not None and under(inside, "backends.azure"),
    ),
)


def source_files() -> list[Path]:
    return sorted((SRC / PACKAGE).rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unplaced = [
        str(path.relative_to(SRC.parent))
        for path in source_files()
        if layer_of(own(module_name(path)) or "") is None
    ]
    assert unplaced == [], "place these in LAYERS here and in docs/architecture.md"


def test_the_rules_see_imports_resolved():
    """The resolver itself: relative imports of a module, of a package and two levels up."""
    engine = {found.module for found in imports_of(SRC / PACKAGE / "engine.py")}
    assert {"batchpilot.backends.base", "batchpilot.events", "anyio"} <= engine
    poller = {found.module for found in imports_of(SRC / PACKAGE / "monitor" / "poller.py")}
    assert {"batchpilot.backends.base", "batchpilot.monitor.state"} <= poller
    package = {found.module for found in imports_of(SRC / PACKAGE / "__init__.py")}
    assert "batchpilot.engine" in package
    assert layer_of("backends.azure.compute") == "backends"
    assert layer_of("monitor.poller") == "engine"
    assert layer_of("monitor.state") == "core"
    assert layer_of("") == "faces"


def test_no_module_breaks_an_import_rule():
    broken = []
    for path in source_files():
        importer = own(module_name(path))
        assert importer is not None
        for found in imports_of(path):
            for rule in RULES:
                if rule.applies_to(importer) and rule.forbids(found.module):
                    where = path.relative_to(SRC.parent)
                    broken.append(f"{where}:{found.line}: imports {found.module}: {rule.name}")
    assert not broken, "forbidden imports:\n" + "\n".join(broken)


@pytest.mark.parametrize("module", ["batchpilot", "batchpilot.metrics", "batchpilot.service"])
def test_importing_the_public_modules_loads_no_azure_sdk(module: str):
    probe = (
        f"import sys, {module}\n"
        "print(' '.join(sorted(name for name in sys.modules if name.split('.')[0] == 'azure')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = done.stdout.split()
    assert loaded == [], f"import {module} loaded {len(loaded)} Azure SDK modules, e.g. {loaded[:3]}"
