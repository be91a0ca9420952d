"""What `import batchpilot.cli` loads: not the modules only some commands use (issue 17, start-up).

The Azure SDKs, aiohttp and rich cost 60-300 ms of imports each; `batchpilot --version` and a local `run`
need none of them. Checked in a fresh interpreter through `sys.modules`, never by timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

LAZY = ("azure", "aiohttp", "rich", "prometheus_client")


def _loaded_after(statement: str) -> list[str]:
    probe = (
        f"{statement}\n"
        "import json, sys\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in "
        f"{LAZY!r})))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("statement", ["import batchpilot.cli", "import batchpilot"])
def test_import_loads_no_sdk_aiohttp_or_rich(statement: str) -> None:
    assert _loaded_after(statement) == []


def test_progress_bar_still_imports_rich_when_shown() -> None:
    # structlog is imported with rich hidden; rich itself must stay importable for the progress bar.
    loaded = _loaded_after(
        "import batchpilot.cli\n"
        "import io\n"
        "from rich.console import Console\n"
        "from batchpilot.subscribers.progress import ProgressDisplay\n"
        "ProgressDisplay(Console(file=io.StringIO()))"
    )
    assert "rich.progress" in loaded


def test_version_prints_without_loading_lazy_modules() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['batchpilot', '--version']\n"
        "import batchpilot.cli\n"
        "try:\n"
        "    batchpilot.cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{LAZY!r}), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("batchpilot ")
    assert done.stderr.strip().splitlines()[-1] == "[]"
