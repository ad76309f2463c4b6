"""Energy tracking (codecarbon, offline) and the carbon window: numbers present and positive, threads, start times."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, time as dtime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from lmwright.tasks.core import codecarbon_adapter as codecarbon
from lmwright.tasks.core.energy import (
    EnergyRecord,
    EnergySettings,
    energy_markdown,
    energy_table,
    merge_energy,
    meter_tracker,
    track,
    training_efficiency,
)
from lmwright.tasks.train.carbon_window import NIGHTLY_WINDOW, CarbonWindow, best_start, wait_for_window

BERLIN = ZoneInfo("Europe/Berlin")
SETTINGS = EnergySettings(measure_power_secs=1)


def busy(seconds: float) -> int:
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


# ----------------------------------------------------------------------------- tracking


def assert_positive(rec: EnergyRecord) -> None:
    for field in ("duration_s", "energy_kwh", "cpu_kwh", "ram_kwh", "co2_kg"):
        value = getattr(rec, field)
        assert value is not None and value > 0, (field, rec)
    assert rec.gpu_kwh >= 0
    assert rec.mode.startswith(("estimate", "rapl")), rec.mode
    assert rec.country_iso_code == "DEU"


def test_track_a_busy_loop_gives_positive_numbers() -> None:
    with track("busy", SETTINGS) as rec:
        busy(0.6)
    assert_positive(rec)
    assert 0.55 < rec.duration_s < 5
    assert rec.max_concurrent == 1
    # No RAPL here: a load-scaled CPU estimate within [idle floor, full TDP] plus constant RAM.
    watts = rec.energy_kwh * 3.6e6 / rec.duration_s
    assert SETTINGS.resolved_ram_watts() * 0.9 <= watts <= (SETTINGS.resolved_cpu_watts() + SETTINGS.resolved_ram_watts()) * 1.1
    co2_per_kwh = rec.co2_kg / rec.energy_kwh * 1000
    assert 100 < co2_per_kwh < 1000, co2_per_kwh  # Germany's grid, gCO2e/kWh
    assert json.loads(json.dumps(rec.to_json()))["energy_kwh"] > 0


def test_concurrent_threads_share_one_tracker_without_double_counting() -> None:
    records: list[EnergyRecord] = []
    errors: list[BaseException] = []

    def shard(i: int) -> None:
        try:
            with track("stage", SETTINGS) as rec:
                busy(0.4)
            records.append(rec)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with track("outer", SETTINGS) as outer:
        threads = [threading.Thread(target=shard, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(records) == 4
    for rec in records:
        assert_positive(rec)
        assert rec.max_concurrent >= 2
    # The outer record and the shards share the same slices: together they are the machine's
    # energy over the outer span, never more than full power for that long.
    total = merge_energy([*records, outer])
    max_watts = SETTINGS.resolved_cpu_watts() + SETTINGS.resolved_ram_watts()
    assert total["energy_kwh"] * 3.6e6 <= max_watts * outer.duration_s * 1.1
    assert total["energy_kwh"] > 0 and total["records"] == 5


def test_codecarbon_still_has_every_member_the_meter_uses() -> None:
    """An upgrade of codecarbon that renames a private member the meter uses fails here, by name."""
    tracker = meter_tracker(SETTINGS, threading.RLock())  # the meter's own tracker, as it builds it
    tracker.start()
    try:
        missing = codecarbon.missing_members(tracker)
        assert not missing, f"the installed codecarbon lacks {missing}: update tasks/core/codecarbon_adapter.py"
        assert codecarbon.started(tracker)
        assert codecarbon.hardware_modes(tracker)[0] != "unknown"
        before = codecarbon.measure(tracker)
        busy(0.3)
        after = codecarbon.measure(tracker)
        assert after.energy_kwh > before.energy_kwh >= 0 and after.co2_kg > before.co2_kg

        hardware = tracker._hardware  # a codecarbon that dropped a member: the error names it
        del tracker._hardware
        with pytest.raises(codecarbon.CodecarbonChanged, match=r"no longer has tracker\._hardware, which lmwright"):
            codecarbon.require_members(tracker)
        tracker._hardware = hardware
    finally:
        tracker.stop()


def test_disabled_records_only_time() -> None:
    with track("off", EnergySettings(enabled=False)) as rec:
        busy(0.01)
    assert rec.mode == "disabled" and rec.energy_kwh == 0 and rec.duration_s > 0


def test_merge_table_and_efficiency() -> None:
    recs = [
        {"stage": "dedup", "duration_s": 1.0, "energy_kwh": 1e-6, "cpu_kwh": 4e-7, "ram_kwh": 6e-7, "gpu_kwh": 0.0, "co2_kg": 4e-7, "mode": "m", "country_iso_code": "DEU"},
        {"stage": "dedup", "duration_s": 2.0, "energy_kwh": 2e-6, "cpu_kwh": 8e-7, "ram_kwh": 1.2e-6, "gpu_kwh": 0.0, "co2_kg": 8e-7, "mode": "m", "country_iso_code": "DEU"},
        EnergyRecord(stage="pretrain", duration_s=10.0, energy_kwh=1e-5, co2_kg=4e-6, mode="m"),
    ]
    m = merge_energy(recs[:2])
    assert m["energy_kwh"] == pytest.approx(3e-6) and m["duration_s"] == 3.0 and m["mode"] == "m" and m["records"] == 2
    rows = energy_table(recs)
    assert [r["stage"] for r in rows] == ["dedup", "pretrain", "total"]
    assert rows[-1]["energy_kwh"] == pytest.approx(1.3e-5)
    assert energy_table({"dedup": m})[0]["energy_kwh"] == pytest.approx(3e-6)
    assert "| total |" in energy_markdown(rows, "m")
    eff = training_efficiency(flops=1e12, tokens=1_000_000, seconds=100.0, energy_kwh=1e-3)
    assert eff["tokens_per_second"] == 10_000
    assert eff["tokens_per_joule"] == pytest.approx(1_000_000 / 3600)
    assert eff["flops_per_joule"] == pytest.approx(1e12 / 3600, rel=1e-3)


# ----------------------------------------------------------------------------- when to train


def at(y: int, mo: int, d: int, h: int, mi: int = 0, tz: ZoneInfo = BERLIN) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz)


def test_off_peak_window_wraps_midnight() -> None:
    w = CarbonWindow(start=dtime(22, 0), end=dtime(6, 0), deadline_hours=12)
    assert best_start(at(2026, 3, 10, 23, 30), w) == at(2026, 3, 10, 23, 30)  # inside, before midnight
    assert best_start(at(2026, 3, 11, 2, 0), w) == at(2026, 3, 11, 2, 0)  # inside, after midnight
    assert best_start(at(2026, 3, 10, 15, 0), w) == at(2026, 3, 10, 22, 0)  # waits 7 h
    assert best_start(at(2026, 3, 11, 6, 0), w) == at(2026, 3, 11, 6, 0)  # closed, opens in 16 h > 12 h: run now
    assert best_start(at(2026, 3, 11, 6, 0), w, deadline=timedelta(hours=16)) == at(2026, 3, 11, 22, 0)


def test_window_in_another_timezone_and_utc_now() -> None:
    w = CarbonWindow(timezone="America/New_York", start=dtime(1, 0), end=dtime(5, 0), deadline_hours=24)
    now = datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc)  # 08:00 in New York (EDT)
    start = best_start(now, w)
    assert start == datetime(2026, 7, 2, 1, 0, tzinfo=ZoneInfo("America/New_York"))
    assert start.astimezone(timezone.utc) == datetime(2026, 7, 2, 5, 0, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        best_start(datetime(2026, 7, 1, 12, 0), w)  # naive: refused


def test_hourly_profile_picks_the_lowest_hour_within_the_deadline() -> None:
    hourly = [300.0] * 24
    hourly[3] = 120.0  # night wind
    hourly[13] = 90.0  # midday solar: the lowest
    w = CarbonWindow(hourly=hourly, deadline_hours=12)
    assert best_start(at(2026, 6, 1, 22, 15), w) == at(2026, 6, 2, 3, 0)  # 13:00 is past the deadline
    assert best_start(at(2026, 6, 1, 22, 15), w, deadline=18) == at(2026, 6, 2, 13, 0)
    assert best_start(at(2026, 6, 2, 13, 20), w) == at(2026, 6, 2, 13, 20)  # already in the lowest hour: now
    flat = CarbonWindow(hourly=[200.0] * 24)
    assert best_start(at(2026, 6, 1, 10, 0), flat) == at(2026, 6, 1, 10, 0)  # ties: the earliest, now


def test_run_hours_scores_the_whole_run() -> None:
    hourly = [300.0] * 24
    hourly[2] = 50.0  # one very clean hour, then dirty
    hourly[5] = hourly[6] = hourly[7] = 100.0  # three clean-ish hours
    short = CarbonWindow(hourly=hourly, deadline_hours=12)
    long = CarbonWindow(hourly=hourly, deadline_hours=12, run_hours=3)
    now = at(2026, 6, 1, 0, 30)
    assert best_start(now, short) == at(2026, 6, 1, 2, 0)
    assert best_start(now, long) == at(2026, 6, 1, 5, 0)


def test_profile_files_csv_json_and_timestamps(tmp_path: Path) -> None:
    csv_path = tmp_path / "de.csv"
    csv_path.write_text("hour,g_co2_per_kwh\n" + "".join(f"{h},{400 - 10 * h if h < 20 else 500}\n" for h in range(24)))
    w = CarbonWindow(profile=str(csv_path), deadline_hours=24)
    assert best_start(at(2026, 1, 5, 8, 0), w) == at(2026, 1, 5, 19, 0)
    json_path = tmp_path / "de.json"
    json_path.write_text(json.dumps({str(h): (100 if h == 4 else 300) for h in range(24)}))
    assert best_start(at(2026, 1, 5, 20, 0), CarbonWindow(profile=str(json_path))) == at(2026, 1, 6, 4, 0)
    # A forecast with timestamps (UTC, 'Z'): stepwise, the value holds until the next point.
    ts_path = tmp_path / "forecast.csv"
    ts_path.write_text(
        "timestamp,intensity\n2026-01-05T10:00Z,380\n2026-01-05T14:30Z,210\n2026-01-05T16:00Z,260\n2026-01-06T02:00Z,150\n"
    )
    w = CarbonWindow(profile=str(ts_path), deadline_hours=8)
    now = datetime(2026, 1, 5, 11, 0, tzinfo=timezone.utc)
    assert best_start(now, w) == datetime(2026, 1, 5, 14, 30, tzinfo=timezone.utc)  # 02:00 is past 8 h
    assert best_start(now, w, deadline=20) == datetime(2026, 1, 6, 2, 0, tzinfo=timezone.utc)
    bad = tmp_path / "bad.csv"
    bad.write_text("hour,intensity\n0,100\n1,100\n")
    with pytest.raises(ValueError, match="no intensity for hours"):
        best_start(now, CarbonWindow(profile=str(bad)))


def test_dst_day_has_23_hours() -> None:
    hourly = [300.0] * 24
    hourly[2] = 10.0  # 02:00 does not exist on 2026-03-29 in Berlin; hourly[3] is the next hour
    hourly[4] = 50.0
    w = CarbonWindow(hourly=hourly, deadline_hours=10)
    start = best_start(at(2026, 3, 28, 23, 0), w)
    assert start == at(2026, 3, 29, 4, 0)
    # 23, 0, 1, 3 (no 2), 4: four real hours (same-tzinfo subtraction in Python is wall-clock, so use UTC)
    assert start.astimezone(timezone.utc) - at(2026, 3, 28, 23, 0).astimezone(timezone.utc) == timedelta(hours=4)


def test_config_validation_and_defaults() -> None:
    with pytest.raises(ValidationError):
        CarbonWindow(hourly=[1.0] * 23)
    with pytest.raises(ValidationError):
        CarbonWindow(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        CarbonWindow(hourly=[1.0] * 24, profile="x.csv")
    assert (NIGHTLY_WINDOW.start, NIGHTLY_WINDOW.end, NIGHTLY_WINDOW.timezone) == (dtime(22), dtime(6), "Europe/Berlin")
    # the nightly cron fires at 02:00 Berlin: inside the window, so no wait
    assert best_start(at(2026, 11, 26, 2, 0), NIGHTLY_WINDOW) == at(2026, 11, 26, 2, 0)
    # a partial form (as the Prefect UI sends) validates with the other defaults
    assert CarbonWindow.model_validate({"deadline_hours": 4}).start == dtime(22)


def test_wait_for_window_runs_now_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s")

    monkeypatch.setattr("lmwright.tasks.train.carbon_window.time.sleep", no_sleep)
    d = wait_for_window(NIGHTLY_WINDOW, now=at(2026, 11, 26, 23, 0))
    assert d.action == "run_now" and d.wait_s == 0
    d = wait_for_window(CarbonWindow(enabled=False), now=at(2026, 11, 26, 15, 0))
    assert d.action == "run_now"


def test_wait_for_window_pauses_the_flow_run_and_resumes_it(prefect_harness: None) -> None:
    """Engine-level: the run is Paused (not Running) until the timer resumes it at the start time."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    seen: dict[str, object] = {}

    @flow
    def waits() -> str:
        now = datetime.now(timezone.utc)
        seen["run_id"] = get_run_context().flow_run.id
        d = wait_for_window(_forecast_window(now), now=now, grace_s=1.0, poll_interval_s=1)
        return d.action

    def watch() -> None:
        deadline = time.monotonic() + 20
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                rid = seen.get("run_id")
                if rid is not None:
                    state = client.read_flow_run(rid).state
                    if state is not None and state.is_paused():
                        seen["paused"] = True
                        return
                time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    assert waits() == "paused"
    elapsed = time.perf_counter() - t0
    watcher.join(timeout=1)
    assert seen.get("paused") is True
    assert elapsed > 2.5, elapsed  # it did wait for the window (how long on a busy machine is not a correctness matter)


def _forecast_window(now: datetime) -> CarbonWindow:
    """A timestamped forecast whose clean step begins 3 s from now."""
    import tempfile

    path = Path(tempfile.mkdtemp()) / "forecast.json"
    start = now + timedelta(seconds=3)
    path.write_text(json.dumps([{"timestamp": now.isoformat(), "intensity": 400}, {"timestamp": start.isoformat(), "intensity": 100}]))
    return CarbonWindow(profile=str(path), deadline_hours=1)
