"""A task's files on its node, as Batch's List Task Files and Get Task File serve them.

List entries have the recorded service's shape: `name` (relative to the task directory, `/`-separated when
recursive), `url`, `isDirectory`, and for a file `properties` {creationTime, lastModified, contentLength
(a string, as the service sends it), contentType}. Byte ranges follow the `ocp-range` header
(`bytes=first-last`, both inclusive; `bytes=first-` to the end). Blocking file work: run these in a thread.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .query import Property, compile_filter
from .state import ServiceError

_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})\Z")
# The service's filter for task files: `startswith(name,'...')` only ("OData filters in Batch").
FILE_PROPERTIES: dict[str, Property[str]] = {
    "name": Property(lambda name: name, frozenset(), startswith=True)
}


def parse_ocp_range(header: str | None) -> tuple[int, int | None] | None:
    """`bytes=first-last` as (first, last or None); None when absent. 400 InvalidHeaderValue if malformed."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        raise ServiceError(
            400, "InvalidHeaderValue", f"The value {header[:64]!r} of ocp-range is not bytes=first-last."
        )
    first, last = int(match.group(1)), int(match.group(2)) if match.group(2) else None
    if last is not None and last < first:
        raise ServiceError(400, "InvalidHeaderValue", f"ocp-range {header[:64]!r} ends before it starts.")
    return first, last


def read_range(path: Path, size: int, wanted: tuple[int, int | None] | None) -> bytes:
    """The file's bytes, or those of `wanted`; 416 InvalidRange when it starts past the end."""
    if wanted is None:
        return path.read_bytes()
    first, last = wanted
    if first >= size:
        raise ServiceError(
            416, "InvalidRange", "The range specified is invalid for the current size of the resource."
        )
    end = size - 1 if last is None else min(last, size - 1)
    with path.open("rb") as handle:
        handle.seek(first)
        return handle.read(end - first + 1)


def list_task_files(
    task_dir: Path, base_url: str, recursive: bool, filter_text: str | None, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` entries of `task_dir`, sorted by name; symbolic links are listed, never followed."""
    matches = compile_filter(filter_text, FILE_PROPERTIES)
    entries: list[dict[str, Any]] = []
    pending = [""]
    while pending and len(entries) < limit:
        prefix = pending.pop(0)
        try:
            with os.scandir(task_dir / prefix if prefix else task_dir) as scan:
                found = sorted(scan, key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in found:
            name = f"{prefix}/{entry.name}" if prefix else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and recursive:
                pending.append(name)
            if not matches(name):
                continue
            entries.append(_entry(entry, name, is_dir, base_url))
            if len(entries) >= limit:
                break
    return entries


def _entry(entry: os.DirEntry[str], name: str, is_dir: bool, base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "url": f"{base_url}/{quote(name)}", "isDirectory": is_dir}
    if is_dir:
        return body
    stat = entry.stat(follow_symlinks=False)
    modified = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body["properties"] = {
        "creationTime": modified,
        "lastModified": modified,
        "contentLength": str(stat.st_size),
        "contentType": "application/octet-stream",
    }
    return body
