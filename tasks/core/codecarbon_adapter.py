"""Every codecarbon member the energy meter uses beyond codecarbon's public API, in one place.

codecarbon's public API starts a tracker and gives a total when it stops. The meter
(tasks/core/energy.py) needs the running totals at any instant from one tracker that many
threads share, and to know how codecarbon measured; only private members give that:

- ``OfflineEmissionsTracker._measure_power_and_energy``: measure now. Overridden here to take
  the meter's lock, because codecarbon's scheduler thread calls it too and it adds to
  unlocked running totals.
- ``OfflineEmissionsTracker._prepare_emissions_data()``: the running totals (its fields
  ``energy_consumed``, ``cpu_energy``, ``ram_energy``, ``gpu_energy``, ``emissions``).
- ``tracker._hardware`` (the CPU/GPU objects it measures) and ``CPU._mode``: which method it
  used (RAPL counters or an estimate from load).
- ``tracker._start_time``: set once the tracker has started.

A codecarbon release that renames one of them would otherwise fail far away (an
``AttributeError`` inside a stage's energy record, or a lock override that silently stops
being called). ``missing_members`` names what the installed codecarbon lacks;
``require_members`` raises ``CodecarbonChanged`` with those names, and the meter calls it when
it starts (a stage then records ``unavailable: CodecarbonChanged: ...``, never fails for it).
tests/test_energy.py runs it on a real started tracker, so an upgrade fails there, by name.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

TRACKER_METHODS = ("_measure_power_and_energy", "_prepare_emissions_data")
TRACKER_ATTRIBUTES = ("_hardware", "_start_time")  # instance attributes of a started tracker
EMISSIONS_FIELDS = ("energy_consumed", "cpu_energy", "ram_energy", "gpu_energy", "emissions")
CPU_MODE_ATTRIBUTE = "_mode"


class CodecarbonChanged(RuntimeError):
    """The installed codecarbon no longer has a member the energy meter uses."""


@dataclass(frozen=True)
class Totals:
    """codecarbon's running totals since the tracker started (kWh, and kg CO2e)."""

    energy_kwh: float
    cpu_kwh: float
    ram_kwh: float
    gpu_kwh: float
    co2_kg: float


def _tracker_class() -> type:
    os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")  # read at import and in __init__
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    return OfflineEmissionsTracker


def locked_tracker(lock: threading.RLock, **kwargs: Any) -> Any:
    """An ``OfflineEmissionsTracker(**kwargs)`` whose measurements take ``lock``."""
    base = _tracker_class()

    class _LockedTracker(base):  # type: ignore[misc, valid-type]
        """codecarbon's tracker with its measurement serialized (its scheduler thread vs. our reads)."""

        def _measure_power_and_energy(self) -> None:  # noqa: D401 - override
            with lock:
                super()._measure_power_and_energy()

    return _LockedTracker(**kwargs)


def started(tracker: Any) -> bool:
    return tracker._start_time is not None


def measure(tracker: Any) -> Totals:
    """Measure now and return the running totals."""
    tracker._measure_power_and_energy()
    data = tracker._prepare_emissions_data()
    return Totals(data.energy_consumed, data.cpu_energy, data.ram_energy, data.gpu_energy, data.emissions)


def hardware_modes(tracker: Any) -> tuple[str, bool]:
    """(how the CPU is measured, e.g. ``intel_rapl`` or ``cpu_load``; whether a GPU is measured)."""
    cpu_mode, gpu = "unknown", False
    for hw in tracker._hardware:
        name = type(hw).__name__
        if name == "CPU":
            cpu_mode = str(getattr(hw, CPU_MODE_ATTRIBUTE))
        elif name == "GPU":
            gpu = True
    return cpu_mode, gpu


def missing_members(tracker: Any) -> list[str]:
    """The members this module uses that ``tracker`` (a started tracker) or codecarbon lack, by name."""
    base = _tracker_class()
    missing = [f"OfflineEmissionsTracker.{m}" for m in TRACKER_METHODS if not callable(getattr(base, m, None))]
    missing += [f"tracker.{a}" for a in TRACKER_ATTRIBUTES if not hasattr(tracker, a)]
    for hw in getattr(tracker, "_hardware", None) or []:
        if type(hw).__name__ == "CPU" and not hasattr(hw, CPU_MODE_ATTRIBUTE):
            missing.append(f"CPU.{CPU_MODE_ATTRIBUTE}")
    if callable(getattr(base, "_prepare_emissions_data", None)) and hasattr(tracker, "_prepare_emissions_data"):
        data = tracker._prepare_emissions_data()
        missing += [f"EmissionsData.{f}" for f in EMISSIONS_FIELDS if not hasattr(data, f)]
    return missing


def require_members(tracker: Any) -> None:
    """Raise ``CodecarbonChanged`` naming every member the installed codecarbon no longer has."""
    missing = missing_members(tracker)
    if missing:
        from importlib.metadata import version

        raise CodecarbonChanged(
            f"codecarbon {version('codecarbon')} no longer has {', '.join(missing)}, which lmwright's energy meter "
            "uses (tasks/core/codecarbon_adapter.py): pin the codecarbon that has them or update the adapter"
        )
