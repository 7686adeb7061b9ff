"""`check_number`: the one check every user-given number goes through (NaN, infinities, bounds)."""

from __future__ import annotations

import math

import pytest

from shunter.core.types import RequestSpec, check_number, short_repr

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("value, bounds, message", [
    (NAN, {"gt": 0}, "x must be > 0 and finite, got nan"),
    (INF, {"gt": 0}, "x must be > 0 and finite, got inf"),
    (-INF, {}, "x must be finite, got -inf"),
    (NAN, {}, "x must be finite, got nan"),
    (0, {"gt": 0}, "x must be > 0 and finite, got 0"),
    (-1.0, {"ge": 0}, "x must be >= 0 and finite, got -1.0"),
    (NAN, {"ge": 0, "le": 1}, r"x must be in \[0, 1\], got nan"),
    (1.0, {"ge": 0, "lt": 1}, r"x must be in \[0, 1\), got 1.0"),
    (0.0, {"gt": 0, "le": 1}, r"x must be in \(0, 1\], got 0.0"),
    (2, {"le": 1}, "x must be <= 1 and finite, got 2"),
    (10**400, {}, r"x must be finite, got 100000000000000000000000\.\.\. \(401 characters\)"),
    ("1", {"gt": 0}, "x must be a number > 0, got '1'"),
    (True, {}, "x must be a number, got True"),
    (None, {}, "x must be a number, got None"),
])
def test_refuses_nan_infinities_and_out_of_bounds_naming_the_field(value, bounds, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number("x", value, **bounds)


@pytest.mark.parametrize("value, bounds", [
    (1, {"gt": 0}), (0.5, {"ge": 0, "le": 1}), (0, {"ge": 0}), (-3.5, {}), (1e300, {"gt": 0}),
    (2**62, {"ge": 1}),
])
def test_returns_a_good_value_unchanged(value, bounds):
    out = check_number("x", value, **bounds)
    assert out == value and type(out) is type(value)


def test_short_repr_cuts_long_values():
    assert short_repr(12) == "12"
    assert short_repr(10**100).endswith("... (101 characters)")


@pytest.mark.parametrize("field, value", [
    ("arrival_s", NAN), ("arrival_s", INF), ("ttft_slo_s", NAN), ("tpot_slo_s", INF),
])
def test_request_spec_refuses_nan_and_infinite_times(field, value):
    kwargs = {"request_id": "r", "arrival_s": 0.0, "num_prompt_tokens": 1, "num_output_tokens": 1,
              field: value}
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        RequestSpec(**kwargs)


def _explicit_init_classes() -> list[type]:
    from shunter.core.sched import interface
    from shunter.core.types import StepShape
    return [RequestSpec, StepShape, interface.ScheduledChunk, interface.NewRequestData,
            interface.SchedulerOutput, interface.StepResult, interface.RequestOutput]


@pytest.mark.parametrize("cls", _explicit_init_classes(), ids=lambda c: c.__name__)
def test_a_hand_written_init_takes_every_field_with_its_default(cls):
    """Hot messages and specs write their `__init__` out (a frozen or generated one costs
    3-4x more): it must take the fields the dataclass declares, in order, with their defaults,
    or `dataclasses.replace` and `repr` would disagree with construction."""
    import dataclasses
    import inspect
    if not inspect.isfunction(cls.__init__):
        pytest.skip("compiled in this install: a native __init__ shows no signature")
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name != "self"]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:  # (a message's init may default more)
            assert param.default == f.default, f.name


def test_a_spec_is_hashable_by_value_and_replace_checks_it_again():
    import dataclasses
    spec = RequestSpec(request_id="r", arrival_s=0.0, num_prompt_tokens=3, num_output_tokens=2)
    same = RequestSpec(request_id="r", arrival_s=0.0, num_prompt_tokens=3, num_output_tokens=2)
    assert spec == same and hash(spec) == hash(same) and len({spec, same}) == 1
    assert dataclasses.replace(spec, tenant="t").tenant == "t"
    with pytest.raises(ValueError, match="num_output_tokens must be >= 1"):
        dataclasses.replace(spec, num_output_tokens=0)
