"""The public API an embedding application uses is exported from `batchpilot`, complete and documented.

Checked mechanically, so that a type added to a signature cannot be forgotten: every project type that an
exported class or function names in its annotations (fields, parameters, return values, properties) is
exported too; every exception batchpilot defines is exported (the backend protocols promise them); every
exported class, and each public method and property it defines, has a docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import batchpilot
import batchpilot.errors
from batchpilot import PoolSpec, TaskTemplate, Workload

_OWN = "batchpilot"
# Members every class has, whose docstrings are the language's.
_DUNDERS_WITH_OWN_MEANING = ("__init__", "__call__", "__aenter__", "__aexit__", "__aiter__")


def exported() -> dict[str, object]:
    return {name: getattr(batchpilot, name) for name in batchpilot.__all__ if name != "__version__"}


def named_types(annotation: object) -> Iterator[type]:
    """Every class of ours that an annotation mentions, however nested (unions, generics, callables)."""
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__module__.startswith(_OWN):
        yield origin
    if isinstance(annotation, type) and annotation.__module__.startswith(_OWN):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from named_types(argument)


def own_members(cls: type) -> Iterator[tuple[str, Callable[..., object]]]:
    """The public methods and property getters a class of ours defines (inherited ones included, when
    defined by a class of ours), as functions."""
    for klass in cls.__mro__:
        if not klass.__module__.startswith(_OWN):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") and name not in _DUNDERS_WITH_OWN_MEANING:
                continue
            function = value.fget if isinstance(value, property) else value
            if isinstance(function, staticmethod | classmethod):
                function = function.__func__
            if inspect.isfunction(function) and function.__module__.startswith(_OWN):
                yield f"{klass.__name__}.{name}", function


def signatures(obj: object) -> Iterator[tuple[str, Callable[..., object] | type]]:
    """What carries annotations: a class (its fields) and its members, or a function."""
    if inspect.isclass(obj):
        if not issubclass(obj, enum.Enum):
            yield obj.__name__, obj
        for name, function in own_members(obj):
            if not (dataclasses.is_dataclass(obj) and name.endswith(".__init__")):
                yield name, function
    elif inspect.isfunction(obj):
        yield obj.__name__, obj


def test_all_is_a_tuple_of_existing_unique_names():
    assert isinstance(batchpilot.__all__, tuple)
    assert len(set(batchpilot.__all__)) == len(batchpilot.__all__)
    assert [name for name in batchpilot.__all__ if not hasattr(batchpilot, name)] == []
    assert {
        "Orchestrator",
        "Workload",
        "TaskTemplate",
        "PoolSpec",
        "BlobInputs",
        "CleanupPolicy",
        "Event",
        "EventStream",
        "RunSummary",
        "Subscriber",
        "LocalBackend",
    } <= set(batchpilot.__all__)
    assert callable(batchpilot.Orchestrator.stop_monitoring)


def test_every_type_an_exported_signature_names_is_exported():
    missing: set[str] = set()
    for name, obj in exported().items():
        for where, annotated in signatures(obj):
            hints = typing.get_type_hints(annotated)
            for hint in hints.values():
                for kind in named_types(hint):
                    if getattr(batchpilot, kind.__name__, None) is not kind:
                        missing.add(f"{kind.__module__}.{kind.__qualname__} (named by {name}: {where})")
    assert sorted(missing) == []


def test_every_exception_batchpilot_defines_is_exported():
    defined = [
        value
        for value in vars(batchpilot.errors).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == "batchpilot.errors"
    ]
    assert len(defined) >= 5
    assert [
        error.__name__ for error in defined if getattr(batchpilot, error.__name__, None) is not error
    ] == []


def test_every_exported_class_and_its_public_members_have_a_docstring():
    undocumented = []
    for name, obj in exported().items():
        if not inspect.isclass(obj):
            continue
        own = obj.__doc__
        # A dataclass without a docstring gets its signature as one; an enum or protocol gets a generic one.
        if not own or own.startswith(f"{obj.__name__}(") or own == "An enumeration.":
            undocumented.append(name)
        for member, function in own_members(obj):
            if member.endswith(("__init__", "__aenter__", "__aexit__", "__aiter__")):
                continue
            if not inspect.getdoc(function):
                undocumented.append(member)
    assert undocumented == []


def test_orchestrator_run_names_what_it_raises():
    doc = inspect.getdoc(batchpilot.Orchestrator.run) or ""
    for error in ("ConfigError", "BackendError"):
        assert error in doc


def test_a_renamed_workload_gets_the_ids_of_its_new_name():
    original = Workload(
        name="first",
        inputs=(Path("a.txt"),),
        template=TaskTemplate("cp {input} out", outputs=("out",)),
        pool=PoolSpec("pool"),
        timeout=timedelta(minutes=5),
    )
    renamed = original.renamed("second")
    assert (renamed.name, renamed.job_id) == ("second", "batchpilot-second")
    assert renamed.input_container == "batchpilot-second-input"
    assert renamed.output_container == "batchpilot-second-output"
    # Everything else is kept.
    assert (renamed.inputs, renamed.pool, renamed.timeout) == (
        original.inputs,
        original.pool,
        original.timeout,
    )
    # dataclasses.replace would have kept the old ids: the trap the method avoids.
    assert dataclasses.replace(original, name="second").job_id == original.job_id


def test_a_renamed_workload_keeps_ids_and_containers_that_were_given_explicitly():
    original = Workload(
        name="first",
        inputs=batchpilot.BlobInputs("users-container"),
        template=TaskTemplate("cp {input} out", outputs=("out",)),
        pool=PoolSpec("pool"),
        output_container="my-outputs",
    )
    renamed = original.renamed("second")
    assert renamed.job_id == "batchpilot-second"
    assert renamed.input_container == "users-container"  # the user's own blobs
    assert renamed.output_container == "my-outputs"
