"""Pure test doubles wired together instead of mocks: a fake clock and an in-memory Compute."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from batchpilot.errors import NotFoundError
from batchpilot.records import AddStatus, AddTaskResult, Ensured, TaskCounts, TaskResult, TaskState, TaskView
from batchpilot.spec import JobSpec, PoolSpec, TaskSpec
from batchpilot.testing import FakeClock  # the public one: time moves only when something sleeps

__all__ = ("T0", "FakeClock", "FakeCompute", "at", "view")

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def view(task_id: str, state: TaskState, t: float, **extra: object) -> TaskView:
    return TaskView(task_id=task_id, state=state, state_transition_time=at(t), **extra)  # type: ignore[arg-type]


@dataclass
class FakeCompute:
    """A Compute whose tasks change only when a test says so; it records every call."""

    tasks: dict[str, TaskView] = field(default_factory=dict)
    counts_override: TaskCounts | None = None
    calls: list[tuple[str, object]] = field(default_factory=list)
    add_results: Callable[[Sequence[TaskSpec]], Sequence[AddTaskResult]] | None = None
    page_size: int = 1000  # tasks per page handed to `list_tasks(on_page=...)`
    bounds: list[datetime | None] = field(default_factory=list)  # each listing's `changed_until`
    queued: list[bool] = field(default_factory=list)  # each listing's `queued`

    async def ensure_pool(self, spec: PoolSpec) -> Ensured:
        return Ensured(spec.pool_id, created=True)

    async def wait_for_nodes(self, pool_id: str) -> int:
        return 1

    async def ensure_job(self, spec: JobSpec) -> Ensured:
        return Ensured(spec.job_id, created=True)

    async def add_tasks(self, job_id: str, tasks: Sequence[TaskSpec]) -> Sequence[AddTaskResult]:
        self.calls.append(("add_tasks", [t.task_id for t in tasks]))
        if self.add_results is not None:
            return self.add_results(tasks)
        return [AddTaskResult(t.task_id, AddStatus.ADDED) for t in tasks]

    async def task_counts(self, job_id: str) -> TaskCounts:
        self.calls.append(("task_counts", None))
        if self.counts_override is not None:
            return self.counts_override
        views = list(self.tasks.values())
        completed = [v for v in views if v.state is TaskState.COMPLETED]
        succeeded = sum(v.result is TaskResult.SUCCESS for v in completed)
        return TaskCounts(
            active=sum(v.state is TaskState.ACTIVE for v in views),
            running=sum(v.state in (TaskState.PREPARING, TaskState.RUNNING) for v in views),
            completed=len(completed),
            succeeded=succeeded,
            failed=len(completed) - succeeded,
        )

    async def list_tasks(
        self,
        job_id: str,
        changed_since: datetime | None = None,
        *,
        changed_until: datetime | None = None,
        queued: bool = True,
        on_page: Callable[[list[TaskView]], Awaitable[None]] | None = None,
    ) -> list[TaskView]:
        self.calls.append(("list_tasks", changed_since))
        self.bounds.append(changed_until)
        self.queued.append(queued)
        views = [
            v
            for v in self.tasks.values()
            if (changed_since is None or v.state_transition_time >= changed_since)
            and (changed_until is None or v.state_transition_time <= changed_until)
        ]
        if on_page is None:
            return views
        for start in range(0, len(views), self.page_size):  # pages as the service hands them out
            await on_page(views[start : start + self.page_size])
        return []

    async def read_task_file(self, job_id: str, task_id: str, name: str, *, tail: int | None = None) -> bytes:
        raise NotFoundError("no files here")

    async def end_job_when_done(self, job_id: str) -> None:
        self.calls.append(("end_job_when_done", job_id))

    async def delete_job(self, job_id: str) -> None:
        self.calls.append(("delete_job", job_id))

    async def delete_pool(self, pool_id: str) -> None:
        self.calls.append(("delete_pool", pool_id))

    async def resize_pool(self, pool_id: str, dedicated: int, spot: int) -> None:
        self.calls.append(("resize_pool", (pool_id, dedicated, spot)))

    def set(self, task_id: str, state: TaskState, t: float, **extra: object) -> None:
        self.tasks[task_id] = view(task_id, state, t, **extra)

    def calls_named(self, name: str) -> list[object]:
        return [arg for called, arg in self.calls if called == name]
