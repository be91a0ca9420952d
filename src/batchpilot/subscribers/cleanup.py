"""Delete what a run created, by its policy, once the run has fully succeeded.

A run that failed, timed out or was interrupted deletes nothing: running the same command again resumes from
what is there. Whatever is left in place is announced with the command that removes it, since a pool costs
money for as long as it has nodes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from ..backends.base import Backend
from ..errors import BackendError
from ..events import Event, ResourceDeleted, ResourceKept, RunFinished, RunStarted
from ..spec import PoolPolicy

Publish = Callable[..., Awaitable[None]]


def cleanup_command(
    backend: str, *, job: str | None = None, pool: str | None = None, container: str | None = None
) -> str:
    """The `batchpilot cleanup` command that deletes the job, pool and/or container named, on `backend`."""
    parts = ["batchpilot", "cleanup", "--backend", backend]
    if job:
        parts += ["--job", job]
    if pool:
        parts += ["--pool", pool]
    if container:
        parts += ["--container", container]
    return " ".join(parts)


class Cleanup:
    def __init__(self, backend: Backend, publish: Publish) -> None:
        self._backend = backend
        self._publish = publish
        self._runs: dict[str, RunStarted] = {}

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._runs[event.run_id] = event
        elif isinstance(event, RunFinished) and (started := self._runs.pop(event.run_id, None)) is not None:
            # The job the run went on in: a later generation when the workload's job had ended.
            started = replace(started, job_id=event.summary.job_id)
            if event.summary.ok:
                await self._clean(started)
            else:
                resume = "the run did not fully succeed; run the same command again to resume"
                await self._keep(started, "job", started.job_id, resume)
                await self._keep(started, "pool", started.pool_id, f"kept with its nodes: {resume}")

    async def _clean(self, run: RunStarted) -> None:
        policy = run.cleanup
        if policy.delete_input_container:
            await self._delete(run, "container", run.input_container, self._backend.storage.delete_container)
        if policy.delete_job:
            await self._delete(run, "job", run.job_id, self._backend.compute.delete_job)
        else:
            await self._keep(run, "job", run.job_id, "kept, so running the same command again does nothing")
        if policy.pool is PoolPolicy.DELETE:
            await self._delete(run, "pool", run.pool_id, self._backend.compute.delete_pool)
        elif policy.pool is PoolPolicy.SCALE_TO_ZERO:
            try:
                await self._backend.compute.resize_pool(run.pool_id, 0, 0)
            except BackendError as exc:
                await self._keep(run, "pool", run.pool_id, f"kept with its nodes, could not scale it: {exc}")
                return
            await self._keep(
                run,
                "pool",
                run.pool_id,
                "scaled to zero nodes, at no cost; the next run brings its nodes back",
            )
        else:
            await self._keep(
                run,
                "pool",
                run.pool_id,
                "kept with its nodes, ready for the next run (change with --pool-after scale-to-zero|delete)",
            )

    async def _delete(
        self, run: RunStarted, kind: str, resource_id: str, delete: Callable[[str], Awaitable[None]]
    ) -> None:
        try:
            await delete(resource_id)
        except BackendError as exc:
            await self._keep(run, kind, resource_id, f"could not delete it: {exc}")
            return
        await self._publish(
            ResourceDeleted(run_id=run.run_id, resource=kind, resource_id=resource_id), source=self
        )

    async def _keep(self, run: RunStarted, kind: str, resource_id: str, reason: str) -> None:
        command = cleanup_command(
            self._backend.name,
            job=resource_id if kind == "job" else None,
            pool=resource_id if kind == "pool" else None,
            container=resource_id if kind == "container" else None,
        )
        await self._publish(
            ResourceKept(
                run_id=run.run_id,
                resource=kind,
                resource_id=resource_id,
                reason=reason,
                delete_command=command,
            ),
            source=self,
        )
