"""The release-window timetable, with fixed clocks: slots, freezes, DST, serialization, stale slots."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from airflow.timetables.base import DataInterval, TimeRestriction

from conveyor.config import parse_service
from conveyor.exceptions import InvalidInputError, ServiceConfigError
from conveyor.timetables import Freeze, ReleaseWindowTimetable, release_window, timetable_for

ROOT = Path(__file__).resolve().parents[3]
MADRID = ZoneInfo("Europe/Madrid")
QUALNAME = "conveyor.timetables.release_window.ReleaseWindowTimetable"


def madrid(*args: int) -> datetime:
    return datetime(*args, tzinfo=MADRID)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def make(now: datetime | None = None, **kwargs) -> ReleaseWindowTimetable:
    kwargs.setdefault("times", ["10:00", "16:00"])
    kwargs.setdefault("days", "mon-fri")
    kwargs.setdefault("timezone", "Europe/Madrid")
    if now is not None:
        kwargs["clock"] = lambda: now
    return ReleaseWindowTimetable(**kwargs)


def scheduled(tt: ReleaseWindowTimetable, earliest: datetime, latest: datetime) -> list[datetime]:
    """What the scheduler (or a backfill) creates between two instants, as UTC datetimes."""
    runs, last = [], None
    restriction = TimeRestriction(earliest=earliest, latest=latest, catchup=True)
    for _ in range(1000):
        info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            return runs
        assert info.data_interval == DataInterval(info.run_after, info.run_after)  # a point
        assert info.logical_date == info.run_after
        runs.append(info.run_after)
        last = info.data_interval
    raise AssertionError("the timetable never stopped")


# --------------------------------------------------------------------------- slots


def test_a_week_has_ten_slots_at_the_right_utc_instants():
    # Week of Monday 16 Nov 2026; Madrid is on CET (UTC+1).
    runs = scheduled(make(), madrid(2026, 11, 16), madrid(2026, 11, 22, 23, 59))
    expected = [utc(2026, 11, day, hour) for day in range(16, 21) for hour in (9, 15)]
    assert runs == expected
    assert [r.astimezone(MADRID).strftime("%a %H:%M") for r in runs[:3]] == ["Mon 10:00", "Mon 16:00", "Tue 10:00"]
    assert make().next_slots(madrid(2026, 11, 15), 10) == expected


def test_a_freeze_on_a_wednesday_removes_exactly_that_days_slots():
    tt = make(freezes=[{"start": "2026-11-18", "end": "2026-11-18", "reason": "Black Friday prep"}])
    runs = scheduled(tt, madrid(2026, 11, 16), madrid(2026, 11, 22, 23, 59))
    assert len(runs) == 8
    assert {r.astimezone(MADRID).date() for r in runs} == {date(2026, 11, d) for d in (16, 17, 19, 20)}
    assert tt.next_slots(madrid(2026, 11, 17, 16, 0), 1) == [utc(2026, 11, 19, 9)]

    freeze = tt.freeze_at(madrid(2026, 11, 18, 12, 0))
    assert isinstance(freeze, Freeze)
    assert freeze.reason == "Black Friday prep"
    assert freeze.label == "2026-11-18"
    assert tt.freeze_at(madrid(2026, 11, 18, 0, 0)) == freeze  # the whole local day, start inclusive
    assert tt.freeze_at(madrid(2026, 11, 18, 23, 59)) == freeze  # end date inclusive
    assert tt.freeze_at(madrid(2026, 11, 17, 23, 59)) is None
    assert tt.freeze_at(madrid(2026, 11, 19, 0, 0)) is None
    assert tt.freeze_at(datetime(2026, 11, 18, 10, 0)) == freeze  # naive = the timetable's local time


def test_a_long_freeze_is_jumped_over_and_dated_freezes_are_instants():
    tt = make(freezes=[
        {"start": date(2026, 12, 22), "end": date(2027, 1, 6), "reason": "year-end"},
        # datetimes: end exclusive, so the 16:00 slot on the 7th runs
        {"start": "2027-01-07T09:00", "end": "2027-01-07T16:00", "reason": "db migration"},
    ])
    assert tt.next_slots(madrid(2026, 12, 21, 12, 0), 2) == [utc(2026, 12, 21, 15), utc(2027, 1, 7, 15)]
    assert tt.freeze_at(madrid(2027, 1, 7, 15, 59)).reason == "db migration"
    assert tt.freeze_at(madrid(2027, 1, 7, 16, 0)) is None


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Last Sunday of March 2027 (28th): CET -> CEST. 10:00 local moves from 09:00Z to 08:00Z.
        ((2027, 3, 26), (2027, 3, 29)),
        # Last Sunday of October 2026 (25th): CEST -> CET. 10:00 local moves from 08:00Z to 09:00Z.
        ((2026, 10, 23), (2026, 10, 26)),
    ],
    ids=["march", "october"],
)
def test_ten_oclock_stays_ten_oclock_across_dst(before, after):
    runs = scheduled(make(), madrid(*before), madrid(*after, 23, 59))
    assert len(runs) == 4  # Friday and Monday, two each; nothing on the weekend of the change
    assert [r.astimezone(MADRID).strftime("%a %H:%M") for r in runs] == [
        "Fri 10:00", "Fri 16:00", "Mon 10:00", "Mon 16:00"]
    offsets = {r.astimezone(MADRID).utcoffset() for r in runs[:2]}, {r.astimezone(MADRID).utcoffset() for r in runs[2:]}
    assert offsets[0] != offsets[1]  # the UTC instant moved by an hour, the wall clock did not
    if before[1] == 3:
        assert (runs[0], runs[2]) == (utc(2027, 3, 26, 9), utc(2027, 3, 29, 8))
    else:
        assert (runs[0], runs[2]) == (utc(2026, 10, 23, 8), utc(2026, 10, 26, 9))


def test_nonexistent_and_ambiguous_local_times_are_deterministic():
    tt = make(times=["02:30", "03:30"], days="daily")
    # 28 Mar 2027: 02:00-03:00 does not exist. 02:30 runs at the instant 03:30 CEST, shared with the
    # 03:30 slot, so there is one run, not two.
    march = tt.next_slots(madrid(2027, 3, 28, 0, 0), 2)
    assert march == [utc(2027, 3, 28, 1, 30), utc(2027, 3, 29, 0, 30)]
    # 25 Oct 2026: 02:00-03:00 happens twice. 02:30 runs once, at the first (CEST) occurrence.
    october = make(times=["02:30"], days="daily").next_slots(madrid(2026, 10, 25, 0, 0), 2)
    assert october == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


# --------------------------------------------------------------------------- the stale-slot guard


LAST_FRIDAY = DataInterval(utc(2026, 11, 13, 15), utc(2026, 11, 13, 15))  # Fri 13 Nov, 16:00 Madrid


def test_unpaused_at_1240_runs_the_1600_slot_not_the_missed_1000_one():
    tt = make(now=madrid(2026, 11, 18, 12, 40))  # a Wednesday, days after the last run
    restriction = TimeRestriction(earliest=utc(2026, 1, 1), latest=None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=LAST_FRIDAY, restriction=restriction)
    assert info.run_after == utc(2026, 11, 18, 15)  # 16:00 local today
    # First activation (no run yet, start_date long ago) behaves the same.
    info = tt.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert info.run_after == utc(2026, 11, 18, 15)


def test_module_clock_can_be_monkeypatched(monkeypatch):
    monkeypatch.setattr(release_window, "_now", lambda: madrid(2026, 11, 18, 12, 40))
    tt = make()  # no clock passed: the module-level one is read at call time
    restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
    info = tt.next_dagrun_info(last_automated_data_interval=LAST_FRIDAY, restriction=restriction)
    assert info.run_after == utc(2026, 11, 18, 15)


def test_a_slot_within_max_lateness_still_runs():
    restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
    tt = make(now=madrid(2026, 11, 18, 10, 20))
    assert tt.next_dagrun_info(last_automated_data_interval=LAST_FRIDAY,
                               restriction=restriction).run_after == utc(2026, 11, 18, 9)
    tt = make(now=madrid(2026, 11, 18, 12, 40), max_lateness="3h")
    assert tt.next_dagrun_info(last_automated_data_interval=LAST_FRIDAY,
                               restriction=restriction).run_after == utc(2026, 11, 18, 9)


def test_catchup_true_creates_every_missed_unfrozen_slot():
    """Documented: with catchup=True (and for backfills) the missed slots are created in order."""
    tt = make(now=madrid(2026, 11, 18, 12, 40), freezes=[{"start": "2026-11-16", "end": "2026-11-16",
                                                            "reason": "x"}])
    restriction = TimeRestriction(earliest=None, latest=None, catchup=True)
    info = tt.next_dagrun_info(last_automated_data_interval=LAST_FRIDAY, restriction=restriction)
    assert info.run_after == utc(2026, 11, 17, 9)  # Tuesday 10:00: Monday is frozen


def test_the_scheduler_stays_on_the_slot_after_the_last_run_and_respects_the_end_date():
    tt = make(now=madrid(2026, 11, 18, 10, 0, 5))  # just after the 10:00 run was created
    last = DataInterval(utc(2026, 11, 18, 9), utc(2026, 11, 18, 9))
    restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
    assert tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction).run_after == utc(
        2026, 11, 18, 15)
    ended = TimeRestriction(earliest=None, latest=madrid(2026, 11, 18, 15, 0), catchup=False)
    assert tt.next_dagrun_info(last_automated_data_interval=last, restriction=ended) is None


def test_is_stale_and_window_at():
    tt = make(now=madrid(2026, 11, 18, 12, 40))
    assert tt.is_stale(madrid(2026, 11, 18, 10, 0))
    assert not tt.is_stale(madrid(2026, 11, 18, 12, 30))
    assert tt.window_at(madrid(2026, 11, 18, 10, 29)) == utc(2026, 11, 18, 9)
    assert tt.window_at(madrid(2026, 11, 18, 10, 31)) is None
    assert tt.window_at(madrid(2026, 11, 21, 10, 5)) is None  # Saturday
    assert tt.next_slot() == utc(2026, 11, 18, 15)


# --------------------------------------------------------------------------- manual runs


def test_manual_runs_are_a_point_interval():
    at = utc(2026, 11, 18, 11, 47, 3)
    assert make().infer_manual_data_interval(run_after=at) == DataInterval(at, at)


def test_manual_run_refusal_inside_and_outside_freezes():
    tt = make(freezes=[{"start": "2026-12-22", "end": "2027-01-06", "reason": "year-end change freeze"}])
    frozen = madrid(2026, 12, 23, 11, 0)
    message = tt.manual_run_refusal(frozen, emergency=False, reason="")
    assert "year-end change freeze" in message
    assert "2026-12-22 – 2027-01-06" in message
    assert tt.manual_run_refusal(frozen, emergency=True, reason="payment outage") is None
    assert "reason" in tt.manual_run_refusal(frozen, emergency=True, reason="  ")
    # Outside a freeze an ordinary manual run is fine, unless windows are required.
    outside = madrid(2026, 11, 18, 12, 40)
    assert tt.manual_run_refusal(outside, emergency=False, reason=None) is None
    refusal = tt.manual_run_refusal(outside, emergency=False, reason=None, require_window=True)
    assert "Wed 2026-11-18 16:00 CET" in refusal
    assert tt.manual_run_refusal(madrid(2026, 11, 18, 16, 10), emergency=False, reason=None,
                                 require_window=True) is None


# --------------------------------------------------------------------------- UI text


def test_summary_and_description():
    tt = make(freezes=[{"start": "2026-12-22", "end": "2027-01-06", "reason": "year-end"}])
    assert tt.summary == "10:00, 16:00 Mon–Fri Europe/Madrid (1 freeze)"
    assert "2026-12-22 – 2027-01-06 (year-end)" in tt.description
    assert make(days="daily", times="9:05").summary == "09:05 daily Europe/Madrid"
    assert make(days=["mon", "wed", "fri"]).summary == "10:00, 16:00 Mon, Wed, Fri Europe/Madrid"
    assert make(days="sat-mon").summary == "10:00, 16:00 Sat–Mon Europe/Madrid"
    assert make().run_ordering == ("run_after",)


# --------------------------------------------------------------------------- serialization


def test_serialize_deserialize_round_trip():
    tt = make(
        freezes=[
            {"start": date(2026, 12, 22), "end": "2027-01-06", "reason": "year-end"},
            {"start": "2027-02-01T09:00:00+01:00", "end": datetime(2027, 2, 1, 18), "reason": "migration"},
        ],
        max_lateness=timedelta(minutes=45),
    )
    data = json.loads(json.dumps(tt.serialize()))  # what the DB stores is plain JSON
    again = ReleaseWindowTimetable.deserialize(data)
    assert again == tt
    assert again.serialize() == tt.serialize()
    assert again.summary == tt.summary
    assert again.description == tt.description
    assert again.max_lateness == timedelta(minutes=45)
    assert again.freezes == tt.freezes
    assert again.next_slots(madrid(2026, 12, 21), 3) == tt.next_slots(madrid(2026, 12, 21), 3)


def test_the_plugin_registers_the_timetable_and_airflow_serialization_round_trips():
    from airflow import plugins_manager
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable

    from conveyor_plugin import ConveyorPlugin

    assert ReleaseWindowTimetable in ConveyorPlugin.timetables
    assert plugins_manager.get_timetables_plugins()[QUALNAME].__name__ == "ReleaseWindowTimetable"
    tt = make(freezes=[{"start": "2026-12-22", "end": "2027-01-06", "reason": "year-end"}])
    encoded = encode_timetable(tt)
    assert encoded["__type"] == QUALNAME
    decoded = decode_timetable(json.loads(json.dumps(encoded)))
    assert decoded.serialize() == tt.serialize()
    assert decoded.summary == tt.summary


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"times": ["10:00", "25:00"]}, "times[1]", "'25:00' is not a time of day"),
        ({"times": ["10"]}, "times[0]", "HH:MM"),
        ({"times": [600]}, "times[0]", "quote times in YAML"),
        ({"times": []}, "times", "at least one"),
        ({"timezone": "Europe/Madird"}, "timezone", "unknown time zone 'Europe/Madird'"),
        ({"timezone": "../etc/passwd"}, "timezone", "unknown time zone"),
        ({"days": "mon-frog"}, "days", "'frog' is not a day"),
        ({"days": ["mon", 3]}, "days[1]", "not a day name"),
        ({"max_lateness": "-5m"}, "max_lateness", "not a duration"),
        ({"max_lateness": timedelta(minutes=-5)}, "max_lateness", "negative"),
        ({"freezes": [{"start": "2026-12-22", "end": "2026-12-01", "reason": "x"}]},
         "freezes[0].end", "2026-12-01 is before start 2026-12-22"),
        ({"freezes": [{"start": "2026-12-22T10:00", "end": "2026-12-22T10:00", "reason": "x"}]},
         "freezes[0].end", "not after start"),
        ({"freezes": [{"start": "2026-12-22", "end": "2026-12-23"}]}, "freezes[0].reason", "required"),
        ({"freezes": [{"start": "22/12/2026", "end": "2026-12-23", "reason": "x"}]},
         "freezes[0].start", "not a date"),
        ({"freezes": [{"start": "2026-12-22", "end": "2026-12-23", "reason": "x", "who": "me"}]},
         "freezes[0]", "unknown field(s) who"),
    ],
)
def test_bad_input_names_the_field(kwargs, field, text):
    with pytest.raises(InvalidInputError) as excinfo:
        make(**kwargs)
    message = str(excinfo.value)
    assert message.startswith(f"{field}: "), message
    assert text in message, message


# --------------------------------------------------------------------------- the service file


def _service(schedule) -> dict:
    doc = yaml.safe_load((ROOT / "include" / "services" / "demo_shop.yaml").read_text())
    doc.pop("schedule", None)
    if schedule is not None:
        doc["schedule"] = schedule
    return doc


def test_service_without_schedule_is_manual_only(tmp_path):
    service = parse_service(_service(None), tmp_path / "demo_shop.yaml")
    assert service.schedule is None
    assert timetable_for(service) is None


def test_service_schedule_section_builds_the_timetable(tmp_path):
    text = textwrap.dedent("""\
        times: ["10:00", "16:00"]
        days: mon-fri
        timezone: Europe/Madrid
        max_lateness: 45m
        freezes:
          - {start: 2026-12-22, end: 2027-01-06, reason: year-end change freeze}
    """)
    schedule = yaml.safe_load(text)
    assert isinstance(schedule["freezes"][0]["start"], date)  # YAML reads unquoted dates as dates
    service = parse_service(_service(schedule), tmp_path / "demo_shop.yaml")
    tt = timetable_for(service)
    assert tt.summary == "10:00, 16:00 Mon–Fri Europe/Madrid (1 freeze)"
    assert tt.max_lateness == timedelta(minutes=45)
    assert tt.freeze_at(madrid(2027, 1, 6, 17, 0)).reason == "year-end change freeze"
    # Defaults: Mon-Fri, UTC, 30 minutes, no freezes.
    service = parse_service(_service({"times": ["09:00"]}), tmp_path / "demo_shop.yaml")
    assert timetable_for(service).summary == "09:00 Mon–Fri UTC"


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        ({"times": ["25:00"]}, "schedule.times[0]"),
        ({"times": [600]}, "schedule.times[0]"),
        ({"times": ["10:00"], "cron": "* * * * *"}, "schedule"),
        ({"times": ["10:00"], "freezes": [{"start": "2026-12-22", "end": "2027-01-06"}]}, "schedule.freezes[0]"),
        ({"times": ["10:00"], "freezes": [{"start": 20261222, "end": "2027-01-06", "reason": "x"}]},
         "schedule.freezes[0].start"),
    ],
)
def test_schema_rejects_malformed_schedules(tmp_path, schedule, text):
    with pytest.raises(ServiceConfigError, match=re.escape(f"demo_shop.yaml: {text}")):
        parse_service(_service(schedule), tmp_path / "demo_shop.yaml")


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        ({"times": ["10:00"], "timezone": "Mars/Olympus"}, "schedule.timezone: unknown time zone"),
        ({"times": ["10:00"], "days": "weekdays"}, "schedule.days: 'weekdays' is not a day"),
        ({"times": ["10:00"], "freezes": [{"start": date(2026, 12, 22), "end": date(2026, 12, 1),
                                           "reason": "x"}]},
         "schedule.freezes[0].end: 2026-12-01 is before start 2026-12-22"),
    ],
)
def test_semantic_schedule_errors_name_the_file_and_field(tmp_path, schedule, text):
    # The service model checks the schedule when the file is loaded (before any timetable is built).
    with pytest.raises(ServiceConfigError) as excinfo:
        parse_service(_service(schedule), tmp_path / "demo_shop.yaml")
    assert str(excinfo.value).startswith(f"{tmp_path / 'demo_shop.yaml'}: {text}"), str(excinfo.value)


# --------------------------------------------------------------------------- a DAG that uses it

DAG_FILE = '''
"""A DAG on release windows."""
from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

from conveyor.timetables import ReleaseWindowTimetable

with DAG(
    dag_id="windowed",
    schedule=ReleaseWindowTimetable(
        times=["10:00", "16:00"], days="mon-fri", timezone="Europe/Madrid",
        freezes=[{"start": "2026-12-22", "end": "2027-01-06", "reason": "year-end"}],
    ),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
):
    EmptyOperator(task_id="noop")
'''


def test_dag_with_the_timetable_parses_and_serializes(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DagRunInfo

    (tmp_path / "windowed.py").write_text(DAG_FILE)
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    dag = bag.dags["windowed"]
    assert isinstance(dag.timetable, ReleaseWindowTimetable)
    assert dag.timetable.freeze_at(madrid(2026, 12, 24, 12, 0)).reason == "year-end"

    data = json.loads(json.dumps(DagSerialization.to_dict(dag)))
    assert data["dag"]["timetable"]["__type"] == QUALNAME
    serdag = DagSerialization.from_dict(data)
    assert serdag.timetable == dag.timetable
    assert serdag.timetable.summary == "10:00, 16:00 Mon–Fri Europe/Madrid (1 freeze)"

    # What the scheduler asks the deserialized DAG after an unpause at 12:40, days after the last run.
    monkeypatch.setattr(release_window, "_now", lambda: madrid(2026, 11, 18, 12, 40))
    last = DagRunInfo.exact(utc(2026, 11, 13, 15))
    info = serdag.next_dagrun_info(last_automated_run_info=last)
    assert info.run_after == utc(2026, 11, 18, 15)
    # And the first run ever, on a freeze day: the first slot after the freeze.
    monkeypatch.setattr(release_window, "_now", lambda: madrid(2026, 12, 28, 9, 0))
    assert serdag.next_dagrun_info(last_automated_run_info=None).run_after == utc(2027, 1, 7, 9)
