"""A progress bar on the terminal (rich), one per run: tasks done out of the inputs, failures counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import Event, RunFinished, RunStarted, TaskFailed, TaskOutputsMissing, TaskSucceeded
from ..text import one_line

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID


class ProgressDisplay:
    def __init__(self, console: Console | None = None) -> None:
        # rich (about 60 ms of imports) is loaded only when a bar is shown, not by `import batchpilot.cli`.
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._bars: dict[str, TaskID] = {}

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            if not self._bars:
                self._progress.start()
            self._bars[event.run_id] = self._progress.add_task(
                one_line(event.job_id, 80), total=event.input_count, failed=0
            )
        elif (
            isinstance(event, TaskSucceeded | TaskFailed)
            and (bar := self._bars.get(event.run_id)) is not None
        ):
            if isinstance(event, TaskFailed):
                failed = int(self._progress.tasks[bar].fields["failed"]) + 1
                self._progress.update(bar, advance=1, failed=failed)
            else:
                self._progress.advance(bar)
        elif isinstance(event, TaskOutputsMissing) and (bar := self._bars.get(event.run_id)) is not None:
            # Counted done when it succeeded; without its outputs it is a failure.
            self._progress.update(bar, failed=int(self._progress.tasks[bar].fields["failed"]) + 1)
        elif (
            isinstance(event, RunFinished)
            and self._bars.pop(event.run_id, None) is not None
            and not self._bars
        ):
            self._progress.stop()
