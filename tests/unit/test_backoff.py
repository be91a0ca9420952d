from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpilot.backoff import BackoffPolicy
from batchpilot.errors import ConfigError

POLICY = BackoffPolicy(initial=0.25, factor=2.0, cap=4.0, jitter=0.1)


def test_grows_by_factor_while_nothing_changes_up_to_the_cap():
    base, seen = None, []
    for _ in range(7):
        base = POLICY.next_base(base, changed=False)
        seen.append(base)
    assert seen == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_resets_to_initial_on_change():
    assert POLICY.next_base(4.0, changed=True) == 0.25


def test_retry_after_is_never_undercut_even_above_the_cap():
    assert POLICY.delay(0.25, unit=0.5, retry_after=10.0) == 10.0
    assert POLICY.delay(2.0, unit=0.5, retry_after=0.1) == 2.0


def test_jitter_extremes():
    assert POLICY.delay(1.0, unit=0.0) == pytest.approx(0.9)
    assert POLICY.delay(1.0, unit=0.5) == pytest.approx(1.0)
    assert POLICY.delay(1.0, unit=0.999999) == pytest.approx(1.1, abs=1e-5)
    assert POLICY.delay(4.0, unit=0.999999) == 4.0  # jitter never exceeds the cap


@given(
    previous=st.one_of(st.none(), st.floats(0.01, 100)),
    changed=st.booleans(),
    unit=st.floats(0, 1, exclude_max=True),
    retry_after=st.one_of(st.none(), st.floats(0, 1000)),
)
def test_delay_bounds(previous, changed, unit, retry_after):
    base = POLICY.next_base(previous, changed=changed)
    assert POLICY.initial <= base <= POLICY.cap
    delay = POLICY.delay(base, unit=unit, retry_after=retry_after)
    assert delay >= base * (1 - POLICY.jitter) - 1e-9
    if retry_after is not None:
        assert delay >= retry_after
    else:
        assert delay <= POLICY.cap


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 5, "cap": 1}, {"factor": 0.5}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_bad_policies_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        BackoffPolicy(**kwargs)
