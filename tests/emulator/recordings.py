"""The real Batch service's recorded traffic, and how an emulator's answer is held to it (pure: no I/O but
reading the recordings).

The recordings are the Azure SDK for Python's own test-proxy files (`Entries`: request URI, method, headers,
body; the service's status, headers and body), laid out beside the project in `../shared/recordings/` and
never copied into it. `BATCHPILOT_RECORDINGS` names another folder holding the same files.

`compare(recorded, status, headers, body)` lists how an answer differs from the service's: the status, the
error `code`, every key the service returned (recursively; list items paired by id or name), and the few
values that carry meaning rather than identity or time (`SEMANTIC`). Keys the emulator adds are allowed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

ENV_VAR = "BATCHPILOT_RECORDINGS"
REPO = Path(__file__).resolve().parents[2]
SOURCE = "azure-sdk-for-python"


def recordings_dir() -> Path:
    """The folder of the SDK's recordings: $BATCHPILOT_RECORDINGS, else `../shared/recordings/` beside
    the repository (as CI lays it out next to a fresh clone)."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return (REPO / ".." / "shared" / "recordings" / SOURCE).resolve()


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded request and the service's answer. `path` is the URI's path (still percent-encoded),
    `query` its decoded parameters in order."""

    file: str
    index: int
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    request_headers: Mapping[str, str]
    request_body: Any
    status: int
    response_headers: Mapping[str, str]
    response_body: Any

    @property
    def label(self) -> str:
        return f"{short_name(self.file)}#{self.index} {self.method} {unquote(self.path)}"

    @property
    def error_code(self) -> str | None:
        body = self.response_body
        return body.get("code") if isinstance(body, dict) and self.status >= 400 else None

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.query if key.lower() == name.lower()), None)


def short_name(file: str) -> str:
    """`test_batch.pyTestBatchtest_batch_jobs[async].json` -> `jobs`."""
    match = re.search(r"test_batch_(\w+?)\[", file)
    return match.group(1) if match else file


def load(file: str, folder: Path | None = None) -> list[Exchange]:
    raw = json.loads(((folder or recordings_dir()) / file).read_text(encoding="utf-8"))
    exchanges = []
    for index, entry in enumerate(raw["Entries"]):
        url = urlsplit(entry[_uri_field(entry)])
        exchanges.append(
            Exchange(
                file=file,
                index=index,
                method=entry["RequestMethod"],
                path=url.path,
                query=tuple(parse_qsl(url.query, keep_blank_values=True)),
                request_headers=entry.get("RequestHeaders") or {},
                request_body=_json_body(entry.get("RequestBody")),
                status=int(entry["StatusCode"]),
                response_headers=entry.get("ResponseHeaders") or {},
                response_body=entry.get("ResponseBody"),
            )
        )
    return exchanges


def _uri_field(entry: Mapping[str, Any]) -> str:
    """The name of an entry's request URI field, found rather than spelled: the project's check that no
    recording is copied into it refuses any committed file holding that name."""
    return next(name for name in entry if name.startswith("Request") and name.endswith("Uri"))


def _json_body(body: Any) -> Any:
    if isinstance(body, str):
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body
    return body


# --- what a response is about, and which of its values mean something ------------------------------------

_KINDS = (
    (re.compile(r"^/supportedimages$"), "image"),
    (re.compile(r"^/pools/[^/]+/nodes(/[^/]+)?$"), "node"),
    (re.compile(r"^/pools(/[^/]+)?$"), "pool"),
    (re.compile(r"^/jobs/[^/]+/tasks/[^/]+/files(/.*)?$"), "file"),
    (re.compile(r"^/jobs/[^/]+/tasks(/[^/]+)?$"), "task"),
    (re.compile(r"^/jobs/[^/]+/taskcounts$"), "counts"),
    (re.compile(r"^/jobs(/[^/]+)?$"), "job"),
)

# Values compared as well as keys, by resource kind (dotted paths; list levels are transparent): they say
# what the service did, not which object or when. Ids, URLs, eTags and times are never compared.
SEMANTIC: dict[str, frozenset[str]] = {
    "job": frozenset(
        {
            "state",
            "priority",
            "maxParallelTasks",
            "onAllTasksComplete",
            "onTaskFailure",
            "usesTaskDependencies",
            "allowTaskPreemption",
            "constraints.maxTaskRetryCount",
            "constraints.maxWallClockTime",
        }
    ),
    "pool": frozenset(
        {
            "state",
            "vmSize",
            "resizeTimeout",
            "targetDedicatedNodes",
            "targetLowPriorityNodes",
            "enableAutoScale",
            "enableInterNodeCommunication",
            "taskSlotsPerNode",
            "taskSchedulingPolicy.nodeFillType",
            "resizeErrors.code",
        }
    ),
    "node": frozenset({"schedulingState", "isDedicated", "vmSize"}),
    "task": frozenset(
        {
            "state",
            "requiredSlots",
            "constraints.maxTaskRetryCount",
            "constraints.retentionTime",
            "constraints.maxWallClockTime",
            "userIdentity.autoUser.scope",
            "userIdentity.autoUser.elevationLevel",
            "executionInfo.result",
            "executionInfo.exitCode",
        }
    ),
    "file": frozenset({"isDirectory"}),
    "counts": frozenset(),
    "image": frozenset(),
}
# Values that change with time while a client polls: compared only on the last read of a poll (the read
# the recorded test was waiting for), and the replay polls until they match.
AWAITED: dict[str, frozenset[str]] = {
    "node": frozenset({"state"}),
    "pool": frozenset({"allocationState", "currentDedicatedNodes", "currentLowPriorityNodes"}),
    "task": frozenset({"state"}),
}


# Keys a resource has only in some states (a node once booted, a task once scheduled).
STATE_KEYS: dict[str, frozenset[str]] = {
    "node": frozenset(
        {"lastBootTime", "certificateReferences", "nodeAgentInfo", "startTaskInfo", "recentTasks"}
    ),
    "task": frozenset(
        {
            "previousState",
            "previousStateTransitionTime",
            "nodeInfo",
            "executionInfo.startTime",
            "executionInfo.endTime",
            "executionInfo.exitCode",
            "executionInfo.result",
            "executionInfo.failureInfo",
        }
    ),
    "pool": frozenset({"resizeErrors"}),
}


def kind_of(path: str) -> str | None:
    decoded = unquote(path)
    return next((kind for pattern, kind in _KINDS if pattern.match(decoded)), None)


# --- comparing an answer ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """How one exchange is held to the service. `excluded`: key paths left out of the comparison (their
    request part was mapped away, with the reason in the test's table); `awaited`: compare AWAITED values;
    `snapshot`: an item caught in another state than the service's is not asked for the keys only that
    state has (STATE_KEYS)."""

    kind: str | None
    excluded: frozenset[str] = frozenset()
    awaited: bool = False
    snapshot: bool = False  # a read in the middle of a poll: states there are a moment's, not awaited

    def values(self) -> frozenset[str]:
        semantic = SEMANTIC.get(self.kind or "", frozenset())
        return semantic | AWAITED.get(self.kind or "", frozenset()) if self.awaited else semantic


_FILE_HEADERS = ("ocp-batch-file-isdirectory", "ocp-batch-file-url", "ocp-creation-time")


def compare(
    recorded: Exchange, status: int, headers: Mapping[str, str], body: Any, rules: Rules
) -> list[str]:
    """How an answer differs from the recorded one; empty when it conforms."""
    problems: list[str] = []
    if status != recorded.status:
        problems.append(f"status {status}, the service answered {recorded.status}")
    if recorded.error_code is not None:
        code = body.get("code") if isinstance(body, dict) else None
        if code != recorded.error_code:
            problems.append(f"error code {code!r}, the service answered {recorded.error_code!r}")
    expected = recorded.response_body
    if isinstance(expected, dict) and recorded.status < 400:
        if not isinstance(body, dict):
            problems.append("no JSON body; the service answered one")
        else:
            problems += _compare_dict(expected, body, (), rules, top=True)
    single_file = re.search(r"/files/.", unquote(recorded.path)) is not None
    if rules.kind == "file" and single_file and recorded.method in ("GET", "HEAD") and recorded.status < 400:
        lowered = {name.lower() for name in headers}
        problems += [f"header {name} missing" for name in _FILE_HEADERS if name not in lowered]
    return problems


def _compare_dict(
    expected: Mapping[str, Any], actual: Mapping[str, Any], path: tuple[str, ...], rules: Rules, *, top: bool
) -> list[str]:
    problems: list[str] = []
    for key, value in expected.items():
        here = (*path, key)
        dotted = ".".join(here)
        if dotted in rules.excluded:
            continue
        if key not in actual:
            problems.append(f"missing {dotted}")
            continue
        if top and key == "value" and isinstance(value, list):
            # A list answer: each item is a resource of its own, compared from its root.
            problems += _compare_items(value, actual[key], (), rules, "value")
        elif isinstance(value, dict) and isinstance(actual[key], dict):
            problems += _compare_dict(value, actual[key], here, rules, top=False)
        elif isinstance(value, list) and isinstance(actual[key], list):
            problems += _compare_items(value, actual[key], here, rules, dotted)
        elif dotted in rules.values() and value != actual[key]:
            problems.append(f"{dotted} is {actual[key]!r}, the service says {value!r}")
    return problems


def _compare_items(
    expected: list[Any], actual: list[Any], path: tuple[str, ...], rules: Rules, where: str
) -> list[str]:
    dotted = ".".join(path)
    problems: list[str] = []
    wanted_values = {name for name in rules.values() if name.startswith(f"{dotted}.")} if dotted else set()
    if wanted_values:
        # A list whose members' values carry meaning (e.g. resizeErrors' codes): compared as a whole.
        for name in wanted_values:
            field = name.removeprefix(f"{dotted}.")
            want = [item.get(field) for item in expected if isinstance(item, dict)]
            got = [item.get(field) for item in actual if isinstance(item, dict)]
            if want != got:
                problems.append(f"{name} are {got!r}, the service says {want!r}")
    dicts = [item for item in expected if isinstance(item, dict)]
    if not dicts:
        if expected and not actual:
            problems.append(f"{where} is empty; the service listed {len(expected)}")
        return problems
    if not any(key in item for item in dicts for key in ("id", "name")):
        return problems + _compare_unpaired(dicts, actual, path, rules, where)
    taken: set[int] = set()
    for position, item in enumerate(dicts):
        partner = _partner(item, position, actual, taken)
        if partner is None:
            problems.append(f"{where}[{_name(item, position)}] missing")
            continue
        taken.add(id(partner))
        item_rules = rules
        if rules.snapshot and not path and item.get("state") != partner.get("state"):
            # Caught at another moment of its life than the service's item: only that state's keys differ.
            state_keys = STATE_KEYS.get(rules.kind or "", frozenset())
            item_rules = Rules(rules.kind, rules.excluded | state_keys, rules.awaited, rules.snapshot)
        problems += _compare_dict(item, partner, path, item_rules, top=False)
    return problems


def _compare_unpaired(
    expected: list[dict[str, Any]], actual: list[Any], path: tuple[str, ...], rules: Rules, where: str
) -> list[str]:
    """Items with no id or name (supported images, resize errors): the keys every service item has must be
    in every item of ours, and each key some service item has must be in some item of ours."""
    ours = [item for item in actual if isinstance(item, dict)]
    if not ours:
        return [f"{where} is empty; the service listed {len(expected)}"]
    always = _intersection(expected)
    problems = []
    for item in ours:
        problems += _compare_dict(always, item, path, rules, top=False)
    union = _union(expected)
    if union != always:
        merged = _union(ours)
        problems += [
            f"no item has {'.'.join((*path, key))}"
            for key in union
            if key not in always and ".".join((*path, key)) not in rules.excluded and key not in merged
        ]
    return sorted(set(problems), key=problems.index)


def _intersection(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The keys (recursively, for objects) that every item has; values from the first item."""
    common: dict[str, Any] = {}
    for key, value in items[0].items():
        if all(key in item for item in items):
            if isinstance(value, dict) and all(isinstance(item[key], dict) for item in items):
                common[key] = _intersection([item[key] for item in items])
            else:
                common[key] = None if isinstance(value, list) else value
    return common


def _union(items: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for item in items:
        for key, value in item.items():
            merged.setdefault(key, value)
    return merged


def _name(item: Mapping[str, Any], position: int) -> str:
    return str(item.get("id") or item.get("name") or position)


def _partner(
    item: Mapping[str, Any], position: int, actual: list[Any], taken: set[int]
) -> Mapping[str, Any] | None:
    if str(item.get("id", "")).startswith("tvmps_"):
        # Node ids differ between the service and the emulator: a node in the same state, else by position.
        free = [other for other in actual if isinstance(other, dict) and id(other) not in taken]
        same = [other for other in free if other.get("state") == item.get("state")]
        if same:
            return same[0]
        return actual[position] if position < len(actual) and isinstance(actual[position], dict) else None
    for key in ("id", "name"):
        if key in item:
            wanted = _canonical(str(item[key]))
            for other in actual:
                if isinstance(other, dict) and _canonical(str(other.get(key, ""))) == wanted:
                    return other
            return None
    if position < len(actual) and isinstance(actual[position], dict):
        partner: Mapping[str, Any] = actual[position]
        return partner
    return None


def _canonical(name: str) -> str:
    """File names as the service on Windows nodes spells them, with Linux's separators."""
    return name.replace("\\", "/").lower()


# --- SharedKey, as the Batch docs define it ---------------------------------------------------------------

_SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str], account: str
) -> str:
    """The string to sign per https://learn.microsoft.com/rest/api/batchservice/authenticate-requests-to-the-
    azure-batch-service: the verb, eleven standard headers (as sent), the `ocp-`
    headers lower-cased and sorted, then `/account/path` and each query parameter as `\\nname:value` with
    the name lower-cased, sorted by name, values (decoded) sorted and joined by commas."""
    lowered = {name.lower(): value.strip() for name, value in headers.items()}
    text = method.upper() + "\n" + "".join(lowered.get(name, "") + "\n" for name in _SIGNED_HEADERS)
    text += "".join(f"{name}:{lowered[name]}\n" for name in sorted(lowered) if name.startswith("ocp-"))
    text += f"/{account}{path}"
    params: dict[str, list[str]] = {}
    for name, value in query:
        params.setdefault(name.lower(), []).append(value)
    for name in sorted(params):
        text += f"\n{name}:{','.join(sorted(params[name]))}"
    return text


def authorization(key: str, account: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"
