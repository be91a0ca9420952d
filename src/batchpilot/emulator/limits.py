"""Every size and count a request can set, bounded where it enters the emulator.

Batch's own limits where it documents one:
- a request body: 1 MB for Add Task Collection ("the total serialized size of this collection must be less
  than 1MB ... RequestBodyTooLarge"); the emulator applies it to every request (the others are smaller);
- ids: 64 characters; display names: 1024 ("can contain any Unicode characters up to a maximum length of
  1024");
- taskSlotsPerNode: at most 4 x the VM size's cores, and 256.
Where Batch documents none, the node's own: a Linux process cannot receive one argument (the `sh -c` command
line) or one environment string longer than MAX_ARG_STRLEN, 131072 bytes (execve(2)), and no NUL in either.
The counts below (environment settings, resource and output files, nodes) are the emulator's, far above any
real workload, so that no request makes it allocate without bound.

Each check raises ServiceError: 413 RequestBodyTooLarge for a body, 400 InvalidPropertyValue naming the
property otherwise. Pure; called by the handlers before anything is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .state import ServiceError, cores_per_node

MAX_BODY_BYTES = 1024 * 1024
MAX_DISPLAY_NAME = 1024
MAX_ARG_BYTES = 131072  # Linux MAX_ARG_STRLEN: the longest single argument or environment string
MAX_ENVIRONMENT_SETTINGS = 1000
MAX_FILES = 1000  # resource files, output files
MAX_TASK_SLOTS = 256
MAX_NODES_PER_POOL = 1000


def too_large(message: str) -> ServiceError:
    return ServiceError(413, "RequestBodyTooLarge", message)


def check_body_size(size: int | None) -> None:
    if size is not None and size > MAX_BODY_BYTES:
        raise too_large(
            f"The request body is {size} bytes; the limit is {MAX_BODY_BYTES} (1 MB, Batch's limit for "
            "a task collection)."
        )


def _invalid(field: str, reason: str) -> ServiceError:
    return ServiceError(400, "InvalidPropertyValue", f"The value provided for {field} is invalid: {reason}.")


def _arg(field: str, value: object, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        raise _invalid(field, "expected a non-empty string" if required else "expected a string")
    if "\x00" in value:
        raise _invalid(field, "it holds a NUL character, which no process can receive")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ARG_BYTES:
        raise _invalid(
            field, f"it is {size} bytes; a node runs at most {MAX_ARG_BYTES} (Linux MAX_ARG_STRLEN)"
        )


def _display_name(body: Mapping[str, Any]) -> None:
    name = body.get("displayName")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_DISPLAY_NAME):
        raise _invalid("displayName", f"at most {MAX_DISPLAY_NAME} characters")


def _list(body: Mapping[str, Any], field: str, limit: int) -> list[Any]:
    items = body.get(field)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _invalid(field, "expected a list")
    if len(items) > limit:
        raise _invalid(field, f"{len(items)} entries; at most {limit}")
    for item in items:
        if not isinstance(item, dict):
            raise _invalid(field, "each entry must be an object")
    return items


def check_task(body: Mapping[str, Any]) -> None:
    """A task definition's sizes and counts (Add Task, each task of Add Task Collection)."""
    _arg("commandLine", body.get("commandLine"), required=True)
    _display_name(body)
    for env in _list(body, "environmentSettings", MAX_ENVIRONMENT_SETTINGS):
        name, value = env.get("name"), env.get("value")
        _arg("environmentSettings.name", name, required=True)
        if "=" in str(name):
            raise _invalid("environmentSettings.name", "a name cannot hold '='")
        _arg("environmentSettings.value", value)
        if len(f"{name}={value or ''}".encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
            raise _invalid("environmentSettings", f"{name}: longer than {MAX_ARG_BYTES} bytes")
    _list(body, "resourceFiles", MAX_FILES)
    _list(body, "outputFiles", MAX_FILES)


def check_job(body: Mapping[str, Any]) -> None:
    _display_name(body)
    _list(body, "commonEnvironmentSettings", MAX_ENVIRONMENT_SETTINGS)
    _list(body, "metadata", MAX_ENVIRONMENT_SETTINGS)


def check_pool(body: Mapping[str, Any], dedicated: int, spot: int, slots: int) -> None:
    """A pool's sizes: its display name, node counts and task slots per node (Batch: at most 4 x the VM
    size's cores, and 256)."""
    _display_name(body)
    _list(body, "metadata", MAX_ENVIRONMENT_SETTINGS)
    check_node_counts(dedicated, spot)
    cores = cores_per_node(str(body.get("vmSize", "")))
    most = min(4 * cores, MAX_TASK_SLOTS)
    if slots > most:
        raise _invalid(
            "taskSlotsPerNode", f"{slots}; at most {most} for {body.get('vmSize')} (4 x its cores, 256)"
        )


def check_node_counts(dedicated: int, spot: int) -> None:
    if dedicated + spot > MAX_NODES_PER_POOL:
        raise _invalid(
            "targetDedicatedNodes",
            f"{dedicated} dedicated and {spot} spot nodes; the emulator runs at most "
            f"{MAX_NODES_PER_POOL} per pool",
        )
