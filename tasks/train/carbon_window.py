"""When to train: start training when the grid is cleanest, before a deadline.

``CarbonWindow`` + ``best_start(now, window)`` (pure, tested without sleeping) pick the start
with the lowest carbon intensity before a deadline, from an hourly intensity profile, or the
next opening of a fixed off-peak window. ``wait_for_window`` makes a flow wait for it the
Prefect-native way (see its docstring). Measuring what training used is tasks/core/energy.py's.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import threading
import time
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class CarbonWindow(BaseModel):
    """When training may start: a fixed off-peak window, or the lowest point of an intensity profile.

    * Off-peak window (``profile`` and ``hourly`` unset): start now if now is inside
      ``[start, end)`` local time (``end <= start`` wraps past midnight), else at the next
      opening, unless that is later than the deadline: then start now (waiting would not reach
      the window).
    * Profile: ``hourly`` (24 values, gCO2e/kWh for local hours 0..23) or ``profile`` (a CSV or
      JSON file: hour -> intensity, or timestamp -> intensity). The start is the instant with
      the lowest mean intensity over ``run_hours`` among now and every hour/timestamp boundary
      up to the deadline; ties go to the earliest.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Wait for a low-carbon start; false: start immediately.")
    timezone: str = Field("Europe/Berlin", description="IANA timezone of start/end and of hourly profiles.")
    start: dtime = Field(dtime(22, 0), description="Off-peak window opening, local time.")
    end: dtime = Field(dtime(6, 0), description="Off-peak window closing, local time (before start: wraps midnight).")
    hourly: list[float] | None = Field(None, description="24 carbon intensities (gCO2e/kWh) for local hours 0..23.")
    profile: str | None = Field(None, description="CSV/JSON intensity profile: columns hour,intensity or timestamp,intensity.")
    deadline_hours: float = Field(12.0, ge=0, description="Latest start, in hours from when the flow asks.")
    run_hours: float = Field(0.0, ge=0, description="Expected run length: score a start by the mean intensity over it (0: at the start).")

    @field_validator("timezone")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown timezone {v!r} (an IANA name such as Europe/Berlin)") from exc
        return v

    @field_validator("hourly")
    @classmethod
    def _24(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) != 24:
            raise ValueError(f"hourly needs 24 values (local hours 0..23), got {len(v)}")
        return v

    @model_validator(mode="after")
    def _one_profile(self) -> "CarbonWindow":
        if self.hourly is not None and self.profile is not None:
            raise ValueError("give either hourly or profile, not both")
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# The nightly refresh's default: German off-peak hours (the classic 22:00-06:00 low tariff,
# low demand and more wind share at night), 12 h deadline. The refresh cron fires at 02:00
# Europe/Berlin, inside the window, so a scheduled refresh trains at once; a manual run in
# the afternoon waits for 22:00 (within 12 h) instead of training at the evening peak.
NIGHTLY_WINDOW = CarbonWindow()


class Profile:
    """A piecewise-constant intensity: hourly by local hour-of-day, or stepwise from timestamps."""

    def __init__(self, tz: ZoneInfo, hourly: Sequence[float] | None = None, points: Sequence[tuple[datetime, float]] | None = None):
        if (hourly is None) == (points is None):
            raise ValueError("a profile is hourly or a list of points")
        self.tz = tz
        self.hourly = list(hourly) if hourly is not None else None
        self.points = sorted(points, key=lambda p: p[0]) if points is not None else None
        if self.points is not None and not self.points:
            raise ValueError("empty intensity profile")

    def at(self, t: datetime) -> float:
        if self.hourly is not None:
            return self.hourly[t.astimezone(self.tz).hour]
        assert self.points is not None
        value = self.points[0][1]  # before the first point: its value
        for ts, v in self.points:
            if ts <= t:
                value = v
            else:
                break
        return value

    def breakpoints(self, t0: datetime, t1: datetime) -> list[datetime]:
        """Instants in (t0, t1] where the intensity may change."""
        if self.points is not None:
            return [ts for ts, _ in self.points if t0 < ts <= t1]
        out = []
        # Local hour boundaries, stepped in UTC quarter hours: DST days have 23 or 25 of them,
        # and zones with :30/:45 offsets start their hours off the UTC hour.
        u = t0.astimezone(timezone.utc).replace(second=0, microsecond=0)
        u = u.replace(minute=u.minute - u.minute % 15) + timedelta(minutes=15)
        while u <= t1:
            if u.astimezone(self.tz).minute == 0:
                out.append(u)
            u += timedelta(minutes=15)
        return out

    def mean(self, t0: datetime, hours: float) -> float:
        if hours <= 0:
            return self.at(t0)
        t1 = t0 + timedelta(hours=hours)
        edges = [t0, *self.breakpoints(t0, t1)]
        if edges[-1] != t1:
            edges.append(t1)
        total = 0.0
        for a, b in zip(edges, edges[1:]):
            total += self.at(a) * (b - a).total_seconds()
        return total / (t1 - t0).total_seconds()


def load_profile(window: CarbonWindow) -> Profile | None:
    """The window's intensity profile, or None for a fixed off-peak window."""
    tz = window.tz
    if window.hourly is not None:
        return Profile(tz, hourly=window.hourly)
    if window.profile is None:
        return None
    path = Path(window.profile)
    text = path.read_text()
    rows: list[tuple[str, float]]
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, Mapping) and "hourly" in data:
            data = data["hourly"]
        if isinstance(data, list) and data and not isinstance(data[0], Mapping):
            rows = [(str(i), float(v)) for i, v in enumerate(data)]
        elif isinstance(data, list):
            rows = [(str(_first(d, "hour", "timestamp", "time", "datetime")), float(_first(d, "intensity", "g_co2_per_kwh", "gco2_per_kwh", "carbon_intensity", "value"))) for d in data]
        else:
            rows = [(str(k), float(v)) for k, v in data.items()]
    else:
        reader = csv.reader(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        all_rows = list(reader)
        if all_rows and not _is_number(all_rows[0][1]):
            all_rows = all_rows[1:]  # header
        rows = [(r[0].strip(), float(r[1])) for r in all_rows]
    if not rows:
        raise ValueError(f"{path}: empty intensity profile")
    if all(k.isdigit() for k, _ in rows):
        hourly = [math.nan] * 24
        for k, v in rows:
            h = int(k)
            if not 0 <= h <= 23:
                raise ValueError(f"{path}: hour {h} is not in 0..23")
            hourly[h] = v
        missing = [h for h, v in enumerate(hourly) if math.isnan(v)]
        if missing:
            raise ValueError(f"{path}: no intensity for hours {missing}")
        return Profile(tz, hourly=hourly)
    points = []
    for k, v in rows:
        ts = datetime.fromisoformat(k.replace("Z", "+00:00"))
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=tz)  # naive timestamps are in the window's timezone
        points.append((ts, v))
    return Profile(tz, points=points)


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    raise KeyError(f"none of {keys} in {dict(d)}")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _in_window(local: datetime, start: dtime, end: dtime) -> bool:
    t = local.time().replace(tzinfo=None)
    if start == end:
        return True  # a 24 h window
    if start < end:
        return start <= t < end
    return t >= start or t < end  # wraps midnight


def _next_opening(now: datetime, window: CarbonWindow) -> datetime:
    tz = window.tz
    local = now.astimezone(tz)
    for days in range(0, 3):
        d: date = local.date() + timedelta(days=days)
        candidate = datetime.combine(d, window.start, tzinfo=tz)
        # A nonexistent local time (DST gap) normalizes forward through UTC.
        candidate = candidate.astimezone(timezone.utc).astimezone(tz)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a daily window opens within 2 days")


def best_start(now: datetime, window: CarbonWindow, deadline: timedelta | float | None = None) -> datetime:
    """The start with the lowest carbon intensity no later than ``now + deadline`` (pure; never sleeps).

    ``now`` must be timezone-aware; ``deadline`` is a timedelta or hours (default:
    ``window.deadline_hours``). Returns an aware datetime in the window's timezone; ``now``
    itself when training should start immediately.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    tz = window.tz
    now = now.astimezone(tz)
    if not window.enabled:
        return now
    if deadline is None:
        deadline = timedelta(hours=window.deadline_hours)
    elif not isinstance(deadline, timedelta):
        deadline = timedelta(hours=float(deadline))
    latest = now + deadline
    profile = load_profile(window)
    if profile is None:
        if _in_window(now, window.start, window.end):
            return now
        opening = _next_opening(now, window)
        return opening if opening <= latest else now
    candidates = [now, *profile.breakpoints(now, latest)]
    best, best_value = now, math.inf
    for c in candidates:
        value = profile.mean(c, window.run_hours)
        if value < best_value - 1e-9:  # strict: ties keep the earliest
            best, best_value = c, value
    return best.astimezone(tz)


class WindowDecision(BaseModel):
    """What ``wait_for_window`` decided and did."""

    now: datetime
    start: datetime
    wait_s: float
    action: Literal["run_now", "paused", "slept"]


def wait_for_window(
    window: CarbonWindow | None,
    now: datetime | None = None,
    *,
    grace_s: float = 60.0,
    poll_interval_s: int = 60,
) -> WindowDecision:
    """Inside a flow: wait for the window's best start without keeping a worker busy.

    Prefect 3 has no "resume at a time" for a paused run (``pause_flow_run`` /
    ``suspend_flow_run`` *fail* the run when their timeout expires), so:

    * in a flow run (the pipeline's training and the nightly refresh): ``pause_flow_run(timeout=wait + grace)``; a timer thread of
      this process calls ``resume_flow_run`` at the start time. The UI shows the run as
      **Paused** (with its expiry), and the Resume button starts it early. The process
      polls the API every ``poll_interval_s`` (no CPU); if it dies the pause expires and
      the run fails.
    * outside a flow run (plain Python): ``time.sleep`` (``action="slept"``).
    """
    now = now or datetime.now(timezone.utc)
    if window is None or not window.enabled:
        return WindowDecision(now=now, start=now, wait_s=0.0, action="run_now")
    start = best_start(now, window)
    wait_s = (start - now).total_seconds()
    if wait_s <= grace_s:
        return WindowDecision(now=now, start=start, wait_s=max(wait_s, 0.0), action="run_now")

    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    logger = _logger()
    if ctx is None or ctx.flow_run is None:
        logger.info("carbon window: sleeping %.0f s until %s", wait_s, start.isoformat())
        time.sleep(wait_s)
        return WindowDecision(now=now, start=start, wait_s=wait_s, action="slept")

    from prefect.flow_runs import pause_flow_run, resume_flow_run

    flow_run_id = ctx.flow_run.id

    def _resume() -> None:
        try:
            resume_flow_run(flow_run_id)
        except Exception as exc:  # already resumed by hand from the UI
            logger.debug("carbon window: resume skipped (%s)", exc)

    timer = threading.Timer(wait_s, _resume)
    timer.daemon = True
    timer.start()
    logger.info("carbon window: paused until %s (%.0f s); Resume in the UI starts now", start.isoformat(), wait_s)
    try:
        pause_flow_run(timeout=int(wait_s + grace_s + 2 * poll_interval_s), poll_interval=poll_interval_s, key="carbon-window")
    finally:
        timer.cancel()
    return WindowDecision(now=now, start=start, wait_s=wait_s, action="paused")


def _logger() -> Any:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger("lmwright.carbon_window")
