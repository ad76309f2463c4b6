"""Energy and carbon: measure every stage and training run (codecarbon, offline), and report it.

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
measurement is serialized by a lock (tasks/core/codecarbon_adapter.py: every private codecarbon
member used is there, checked when the tracker starts),
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

When to train (the carbon window) is tasks/train/carbon_window.py's: it gates training.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core import codecarbon_adapter as codecarbon

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


def meter_tracker(settings: EnergySettings, lock: threading.RLock) -> Any:
    """The codecarbon tracker a meter runs: offline, quiet, measuring under ``lock``."""
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
    return codecarbon.locked_tracker(lock, **kwargs)


def _describe_mode(tracker: Any, settings: EnergySettings) -> str:
    """What codecarbon actually used, read from its hardware objects."""
    cpu_mode, gpu = codecarbon.hardware_modes(tracker)
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
        self.tracker = meter_tracker(settings, self.lock)
        with self.lock:
            self.tracker.start()
            try:
                codecarbon.require_members(self.tracker)  # a codecarbon that changed says what, by name
            except codecarbon.CodecarbonChanged:
                self.stop()  # its scheduler thread must not outlive the failed meter
                raise
            if not codecarbon.started(self.tracker):
                raise RuntimeError("codecarbon tracker did not start")
            self.mode = _describe_mode(self.tracker, settings)
            self.active: dict[int, _Open] = {}
            self.last = self._sample()

    def _sample(self) -> _Totals:
        t = codecarbon.measure(self.tracker)
        return _Totals(time.perf_counter(), t.energy_kwh, t.cpu_kwh, t.ram_kwh, t.gpu_kwh, t.co2_kg)

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
