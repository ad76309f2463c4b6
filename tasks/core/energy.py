"""Energy, carbon and "when to train": measure every stage, and start training when the grid is cleanest.

Measuring
---------
``track(stage, settings)`` is a context manager around one process-wide codecarbon
``OfflineEmissionsTracker`` (no network, no files, quiet)::

    with track("dedup", settings.energy) as rec:
        ...work...
    rec.to_json()   # {"duration_s", "energy_kwh", "co2_kg", "mode", ...}, filled at exit

Why one tracker per process, not one per ``track``:

* codecarbon's tracker is not thread-safe: its periodic scheduler thread and any other caller
  both run ``_measure_power_and_energy``, which adds to unlocked running totals.
* Starting a tracker costs ~2 s (hardware detection, CPU-load priming): a per-shard
  tracker would cost more than many shards do.
* In "machine" mode every tracker measures the *whole machine*: two trackers open at
  once (two shards in a thread pool) would each report the machine's full power, and
  the stage total would double-count.

So one tracker runs for the life of the process (started lazily, stopped at exit), its
measurement is serialized by a lock (a subclass wraps ``_measure_power_and_energy``),
and ``track`` reads its cumulative counters at every enter and exit. Between two such
events the set of open records is constant; the energy of that time slice is shared
equally among them. The records of a stage's concurrent shards therefore sum to the
machine's energy over the stage's wall-clock span (no double counting), and a record
open alone gets everything the machine used meanwhile.

With a process pool or Dask (one tracker per worker process) use
``tracking_mode="process"``, so each worker charges only its own CPU time.

No RAPL here
------------
These machines (cloud VMs, AMD EPYC, 2 vCPUs) expose no RAPL counters, so codecarbon
estimates CPU power from load: ``watts = cpu_watts * (0.1 + 0.9 * load**3)`` in machine
mode, and RAM as a constant. Both inputs are explicit settings below and the record's
``mode`` says which method codecarbon actually used (``rapl`` where counters exist, and
NVML energy counters for NVIDIA GPUs, detected automatically).

When to train
-------------
``CarbonWindow`` + ``best_start(now, window)`` (pure, tested without sleeping) pick the
start with the lowest carbon intensity before a deadline, from an hourly intensity
profile, or the next opening of a fixed off-peak window. ``wait_for_window`` makes a
flow wait for it the Prefect-native way (see its docstring).
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ----------------------------------------------------------------------------- settings

# AMD EPYC 7763 (the class of CPU these VMs report as "AMD EPYC"): 280 W TDP for
# 64 cores / 128 hardware threads, ~2.2 W per thread. A cloud vCPU is one hardware
# thread, so a VM's share of the package TDP is ~2.2 W per vCPU (4.4 W on 2 vCPUs).
DEFAULT_CPU_WATTS_PER_VCPU = 2.2
# codecarbon's long-standing rule of thumb before its per-DIMM model: 3 W per 8 GB.
DEFAULT_RAM_WATTS_PER_GB = 0.375


class EnergySettings(BaseModel):
    """How energy and CO2 are measured. Part of the pipeline config; never of a stage fingerprint."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Track energy and CO2 per stage (codecarbon, offline).")
    country_iso_code: str = Field(
        "DEU",
        min_length=3,
        max_length=3,
        description="ISO 3166-1 alpha-3 country of the machine: selects the grid's carbon intensity (offline data).",
    )
    region: str | None = Field(None, description="Optional region inside the country (e.g. a US state), if codecarbon has data for it.")
    carbon_intensity_g_per_kwh: float | None = Field(
        None, ge=0, description="Override the grid's carbon intensity (gCO2e/kWh), e.g. a supplier's contract value."
    )
    cpu_watts: float | None = Field(
        None,
        gt=0,
        description=(
            "CPU power at full load for the whole machine (W). Default: "
            f"{DEFAULT_CPU_WATTS_PER_VCPU} W per vCPU, the per-thread share of an AMD EPYC 7763 "
            "(280 W / 128 threads). These VMs have no RAPL, so codecarbon scales this by the CPU load."
        ),
    )
    ram_watts: float | None = Field(
        None,
        gt=0,
        description=f"RAM power (W), constant. Default: {DEFAULT_RAM_WATTS_PER_GB} W per GB of the machine's RAM (3 W per 8 GB).",
    )
    tracking_mode: Literal["machine", "process"] = Field(
        "machine",
        description="machine: the whole machine's load (one pipeline per machine). process: this process's CPU time only "
        "(shared machines, process pools).",
    )
    measure_power_secs: float = Field(
        15.0, gt=0, description="codecarbon's periodic measurement interval (s); stage boundaries are measured exactly anyway."
    )
    pue: float = Field(1.0, ge=1.0, description="Data-centre power usage effectiveness, multiplies all energy.")

    def resolved_cpu_watts(self) -> float:
        return self.cpu_watts if self.cpu_watts is not None else DEFAULT_CPU_WATTS_PER_VCPU * (os.cpu_count() or 1)

    def resolved_ram_watts(self) -> float:
        if self.ram_watts is not None:
            return self.ram_watts
        try:
            import psutil

            gb = psutil.virtual_memory().total / 1024**3
        except Exception:  # pragma: no cover - psutil comes with codecarbon
            gb = 8.0
        return round(DEFAULT_RAM_WATTS_PER_GB * gb, 3)


class EnergyRecord(BaseModel):
    """One tracked span (a stage, a shard, a training run). Filled when its ``track`` block exits."""

    stage: str
    duration_s: float = 0.0
    energy_kwh: float = 0.0
    cpu_kwh: float = 0.0
    ram_kwh: float = 0.0
    gpu_kwh: float = 0.0
    co2_kg: float = 0.0
    mode: str = "pending"
    country_iso_code: str | None = None
    cpu_watts: float | None = None
    ram_watts: float | None = None
    max_concurrent: int = 1  # most records open at once during this one (energy was shared among them)

    @property
    def joules(self) -> float:
        return self.energy_kwh * 3.6e6

    def to_json(self) -> dict[str, Any]:
        d = self.model_dump()
        for k in ("energy_kwh", "cpu_kwh", "ram_kwh", "gpu_kwh", "co2_kg"):
            d[k] = float(f"{d[k]:.6g}")
        d["duration_s"] = round(d["duration_s"], 4)
        return d


# ----------------------------------------------------------------------------- the meter


class _Totals:
    __slots__ = ("t", "energy", "cpu", "ram", "gpu", "co2")

    def __init__(self, t: float, energy: float = 0.0, cpu: float = 0.0, ram: float = 0.0, gpu: float = 0.0, co2: float = 0.0):
        self.t, self.energy, self.cpu, self.ram, self.gpu, self.co2 = t, energy, cpu, ram, gpu, co2

    def minus(self, other: "_Totals") -> "_Totals":
        return _Totals(
            self.t - other.t,
            self.energy - other.energy,
            self.cpu - other.cpu,
            self.ram - other.ram,
            self.gpu - other.gpu,
            self.co2 - other.co2,
        )


class _Open:
    __slots__ = ("record", "start", "acc", "max_concurrent")

    def __init__(self, record: EnergyRecord, start: float):
        self.record, self.start, self.acc, self.max_concurrent = record, start, _Totals(0.0), 1


def _make_tracker(settings: EnergySettings, lock: threading.RLock) -> Any:
    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")  # read at import and in __init__
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)

    class _LockedTracker(OfflineEmissionsTracker):
        """codecarbon's tracker with its measurement serialized (its scheduler thread vs. our reads)."""

        def _measure_power_and_energy(self) -> None:  # noqa: D401 - override
            with lock:
                super()._measure_power_and_energy()

    kwargs: dict[str, Any] = dict(
        project_name="lmwright",
        country_iso_code=settings.country_iso_code,
        output_methods=[],  # no CSV, no API: the numbers go to stats.json via EnergyRecord
        log_level="error",
        measure_power_secs=settings.measure_power_secs,
        tracking_mode=settings.tracking_mode,
        force_cpu_power=settings.resolved_cpu_watts(),
        force_ram_power=settings.resolved_ram_watts(),
        force_mode_cpu_load=True,  # no RAPL: scale the CPU watts by load (a TDP constant would ignore idling)
        pue=settings.pue,
        allow_multiple_runs=True,  # no lock file in /tmp: one tracker per process is ours to enforce
    )
    if settings.region:
        kwargs["region"] = settings.region
    if settings.carbon_intensity_g_per_kwh is not None:
        kwargs["force_carbon_intensity_g_co2e_kwh"] = settings.carbon_intensity_g_per_kwh
    return _LockedTracker(**kwargs)


def _describe_mode(tracker: Any, settings: EnergySettings) -> str:
    """What codecarbon actually used, read from its hardware objects."""
    cpu_mode, gpu = "unknown", False
    for hw in getattr(tracker, "_hardware", []):
        name = type(hw).__name__
        if name == "CPU":
            cpu_mode = str(getattr(hw, "_mode", "unknown"))
        elif name == "GPU":
            gpu = True
    if cpu_mode in ("intel_rapl", "windows_emi", "apple_powermetrics", "intel_power_gadget"):
        cpu = "rapl" if cpu_mode == "intel_rapl" else cpu_mode
    elif cpu_mode == "cpu_load":
        cpu = f"estimate: cpu load x {settings.resolved_cpu_watts():g} W ({settings.tracking_mode})"
    elif cpu_mode == "constant":
        cpu = f"estimate: constant cpu {settings.resolved_cpu_watts():g} W"
    else:
        cpu = f"cpu {cpu_mode}"
    ram = f"ram constant {settings.resolved_ram_watts():g} W"
    return f"{cpu}; {ram}" + ("; gpu nvml counters" if gpu else "")


class _Meter:
    """One codecarbon tracker for the process; per-record accounting by shared time slices."""

    def __init__(self, settings: EnergySettings):
        self.settings = settings
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.tracker = _make_tracker(settings, self.lock)
        with self.lock:
            self.tracker.start()
            if getattr(self.tracker, "_start_time", None) is None:
                raise RuntimeError("codecarbon tracker did not start")
            self.mode = _describe_mode(self.tracker, settings)
            self.active: dict[int, _Open] = {}
            self.last = self._sample()

    def _sample(self) -> _Totals:
        tr = self.tracker
        tr._measure_power_and_energy()
        data = tr._prepare_emissions_data()
        return _Totals(
            time.perf_counter(), data.energy_consumed, data.cpu_energy, data.ram_energy, data.gpu_energy, data.emissions
        )

    def _advance(self) -> None:
        now = self._sample()
        delta = now.minus(self.last)
        self.last = now
        n = len(self.active)
        if not n:
            return
        for o in self.active.values():
            a = o.acc
            a.energy += delta.energy / n
            a.cpu += delta.cpu / n
            a.ram += delta.ram / n
            a.gpu += delta.gpu / n
            a.co2 += delta.co2 / n

    def open(self, record: EnergyRecord) -> int:
        with self.lock:
            self._advance()
            token = id(record)
            self.active[token] = _Open(record, time.perf_counter())
            n = len(self.active)
            for o in self.active.values():
                o.max_concurrent = max(o.max_concurrent, n)
            return token

    def close(self, token: int) -> EnergyRecord:
        with self.lock:
            self._advance()
            o = self.active.pop(token)
        r, a = o.record, o.acc
        r.duration_s = time.perf_counter() - o.start
        r.energy_kwh, r.cpu_kwh, r.ram_kwh, r.gpu_kwh, r.co2_kg = a.energy, a.cpu, a.ram, a.gpu, a.co2
        r.mode = self.mode
        r.country_iso_code = self.settings.country_iso_code
        r.cpu_watts = self.settings.resolved_cpu_watts()
        r.ram_watts = self.settings.resolved_ram_watts()
        r.max_concurrent = o.max_concurrent
        return r

    def stop(self) -> None:
        with self.lock:
            try:
                self.tracker.stop()
            except Exception:  # pragma: no cover - stopping at exit must never raise
                pass


_METERS: dict[str, _Meter] = {}
_METERS_LOCK = threading.Lock()


def _meter(settings: EnergySettings) -> _Meter:
    key = settings.model_dump_json()
    with _METERS_LOCK:
        m = _METERS.get(key)
        if m is None or m.pid != os.getpid():  # a forked worker gets its own tracker
            m = _METERS[key] = _Meter(settings)
        return m


@atexit.register
def shutdown() -> None:
    """Stop every tracker of this process (also registered at exit)."""
    with _METERS_LOCK:
        meters = [m for m in _METERS.values() if m.pid == os.getpid()]
        _METERS.clear()
    for m in meters:
        m.stop()


@contextmanager
def track(stage: str, settings: EnergySettings | None = None) -> Iterator[EnergyRecord]:
    """Measure the block: yields an ``EnergyRecord`` that is filled when the block exits.

    Safe from many threads at once (see the module docstring for how concurrent records share
    the machine's energy). With ``settings.enabled`` false, or codecarbon missing, only the
    duration is recorded and ``mode`` says why.
    """
    settings = settings or EnergySettings()
    record = EnergyRecord(stage=stage)
    meter: _Meter | None = None
    if settings.enabled:
        try:
            meter = _meter(settings)
        except Exception as exc:  # codecarbon missing or broken: never fail a stage for its energy figure
            record.mode = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    else:
        record.mode = "disabled"
    token: int | None = None
    if meter is not None:
        try:
            token = meter.open(record)
        except Exception as exc:  # a codecarbon failure mid-run: keep the stage, record why
            record.mode = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    if token is None:
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.duration_s = time.perf_counter() - start
        return
    try:
        yield record
    finally:
        meter.close(token)


# ----------------------------------------------------------------------------- reporting


def training_efficiency(flops: float, tokens: int, seconds: float, energy_kwh: float) -> dict[str, float]:
    """What a training stage adds to its stats: FLOPs, throughput, and work per joule."""
    joules = energy_kwh * 3.6e6
    return {
        "flops": float(flops),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else 0.0,
        "tokens_per_joule": round(tokens / joules, 3) if joules > 0 else 0.0,
        "flops_per_joule": float(f"{flops / joules:.4g}") if joules > 0 else 0.0,
        "joules_per_token": float(f"{joules / tokens:.4g}") if tokens > 0 else 0.0,
    }


def _as_dict(r: EnergyRecord | Mapping[str, Any]) -> Mapping[str, Any]:
    return r.to_json() if isinstance(r, EnergyRecord) else r


def merge_energy(records: Iterable[EnergyRecord | Mapping[str, Any]]) -> dict[str, Any]:
    """Sum records (EnergyRecords or their JSON, e.g. per-shard) into one ``energy`` block for stats.json.

    ``duration_s`` is the sum of the records' durations (for concurrent shards: busy seconds,
    not wall clock); energy and CO2 are exact totals because concurrent records share slices.
    """
    rows = [_as_dict(r) for r in records]
    modes = sorted({str(r.get("mode", "")) for r in rows if r.get("mode")})
    total = {
        "records": len(rows),
        "duration_s": round(sum(float(r.get("duration_s", 0.0)) for r in rows), 4),
        **{k: float(f"{sum(float(r.get(k, 0.0)) for r in rows):.6g}") for k in ("energy_kwh", "cpu_kwh", "ram_kwh", "gpu_kwh", "co2_kg")},
        "mode": "; ".join(modes) if len(modes) > 1 else (modes[0] if modes else "none"),
    }
    countries = sorted({r["country_iso_code"] for r in rows if r.get("country_iso_code")})
    if countries:
        total["country_iso_code"] = ",".join(countries)
    return total


def energy_table(stages: Mapping[str, EnergyRecord | Mapping[str, Any]] | Sequence[EnergyRecord | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``create_table_artifact`` / a markdown table: one per stage, plus a total row.

    Accepts ``{stage: energy-block}`` (e.g. each stage's ``stats.json["energy"]``) or a list of
    records (grouped by their ``stage``).
    """
    if isinstance(stages, Mapping):
        groups = {name: [_as_dict(v)] for name, v in stages.items()}
    else:
        groups = {}
        for r in stages:
            d = _as_dict(r)
            groups.setdefault(str(d.get("stage", "?")), []).append(d)
    rows = []
    for name, recs in groups.items():
        m = merge_energy(recs)
        rows.append({"stage": name, "seconds": m["duration_s"], "energy_kwh": m["energy_kwh"], "co2_kg": m["co2_kg"]})
    rows.append(
        {
            "stage": "total",
            "seconds": round(sum(r["seconds"] for r in rows), 4),
            "energy_kwh": float(f"{sum(r['energy_kwh'] for r in rows):.6g}"),
            "co2_kg": float(f"{sum(r['co2_kg'] for r in rows):.6g}"),
        }
    )
    return rows


def energy_markdown(rows: Sequence[Mapping[str, Any]], mode: str | None = None) -> str:
    """A markdown table of ``energy_table`` rows, for the data card and the evaluation report."""
    lines = ["| stage | seconds | energy (kWh) | CO2 (kg) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {r['energy_kwh']:.3g} | {r['co2_kg']:.3g} |")
    if mode:
        lines += ["", f"Measured with codecarbon (offline): {mode}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- when to train


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
        return logging.getLogger("lmwright.energy")


__all__ = [
    "EnergySettings",
    "EnergyRecord",
    "track",
    "shutdown",
    "training_efficiency",
    "merge_energy",
    "energy_table",
    "energy_markdown",
    "CarbonWindow",
    "NIGHTLY_WINDOW",
    "Profile",
    "load_profile",
    "best_start",
    "WindowDecision",
    "wait_for_window",
]
