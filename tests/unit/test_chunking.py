"""The pure chunker: order kept, at most 100 tasks and under the byte budget per collection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batchpilot.spec import TaskSpec
from batchpilot.submit import chunk_tasks, estimated_size


def tasks(n: int, command_size: int = 10) -> list[TaskSpec]:
    return [TaskSpec(f"t{i}", "x" * command_size) for i in range(n)]


def test_chunks_hold_at_most_100_tasks():
    chunks = chunk_tasks(tasks(250))
    assert [len(c) for c in chunks] == [100, 100, 50]


def test_chunks_stay_under_the_byte_budget():
    big = tasks(60, command_size=20_000)  # 60 x ~20 KB = ~1.2 MB
    chunks = chunk_tasks(big)
    assert len(chunks) >= 2
    assert all(sum(estimated_size(t) for t in c) < 1_000_000 for c in chunks)


@given(
    sizes=st.lists(st.integers(0, 5000), max_size=400),
    max_count=st.integers(1, 100),
    budget=st.integers(100, 50_000),
)
def test_chunking_keeps_order_and_limits(sizes, max_count, budget):
    items = [TaskSpec(f"t{i}", "") for i in range(len(sizes))]
    size_of = {t.task_id: s for t, s in zip(items, sizes, strict=True)}
    chunks = chunk_tasks(items, max_count=max_count, max_bytes=budget, size_of=lambda t: size_of[t.task_id])
    assert [t for c in chunks for t in c] == items
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_count
        if len(chunk) > 1:
            assert sum(size_of[t.task_id] + 1 for t in chunk) + 64 <= budget
