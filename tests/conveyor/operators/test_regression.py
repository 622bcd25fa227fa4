"""Which areas a regression run takes (issue 14): the rotation's for the run's month, another month's on
request, or one area by hand; an unknown area or month is refused before the replica changes."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from conveyor.config import load_service
from conveyor.exceptions import InvalidInputError
from conveyor.operators.regression import month_areas, run_month


@pytest.fixture(scope="module")
def regression():
    return load_service("demo_shop").regression  # cart, catalog, api: one a month


def test_a_scheduled_run_takes_its_own_months_areas(regression):
    context = {"dag_run": SimpleNamespace(run_after=dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC))}
    assert run_month(context) == (2026, 2)
    assert month_areas(regression, {"area": None, "month": None}, *run_month(context)) == {
        "month": "2026-02", "areas": ["catalog"]}


def test_a_manual_run_may_name_the_month_or_one_area(regression):
    assert month_areas(regression, {"month": 3}, 2026, 11) == {"month": "2026-03", "areas": ["api"]}
    assert month_areas(regression, {"area": "cart"}, 2026, 11) == {"month": "2026-11", "areas": ["cart"]}
    assert month_areas(regression, {"area": "cart", "month": 2}, 2026, 11) == {"month": "2026-02", "areas": ["cart"]}


@pytest.mark.parametrize(("params", "message"), [
    ({"area": "checkout"}, "area 'checkout' is not one of the service's regression areas (cart, catalog, api)"),
    ({"month": 13}, "month must be 1-12, got 13"),
])
def test_an_unknown_area_or_month_is_refused(regression, params, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        month_areas(regression, params, 2026, 1)
