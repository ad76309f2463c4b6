"""CPU thread settings every lmwright process starts with, set before torch loads OpenMP.

torch's CPU kernels run on GNU OpenMP (libgomp). By default an idle OpenMP thread spins
(~300,000 turns) before it sleeps, betting that the next parallel region comes soon. On a
quiet machine the bet pays; when other processes want the same cores, the spinning threads
take the time slices the working threads need, and every small region waits for a thread
that is not scheduled. On 2 shared cores (load average 10-28) the tiny model trained 4-9x
faster with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) and evaluated 36-149x
faster (benchmarks/busy_machine.py); on a quiet machine the first probe saw no cost (6,000
vs 6,050 tokens/s). Capping torch at one thread avoids the spinning too but was slower in
most pairs (PASSIVE: 1.1-1.8x training, 0.8-5.9x evaluation), so torch's thread count is
left as it is.

libgomp reads its environment once, when it is loaded (at ``import torch``), so the setting
must be in ``os.environ`` before that, in every process that runs torch. The ``flows``,
``tasks`` and ``models`` packages call ``apply_cpu_defaults`` in their ``__init__``, which
every entry point passes through first (the ``lmwright`` command, the flow modules a
deployment loads, ``python -m lmwright.tasks.train.worker`` under torchrun); child processes
(torchrun ranks, the langid pool, Dask workers) inherit it. A value the user set wins. A
program that imports torch before any lmwright module keeps OpenMP's defaults in its own
process (its children still get the setting): set the variable in its environment instead.
"""

from __future__ import annotations

import os
from typing import Mapping

CPU_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def cpu_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Only the CPU settings, as a child process should get them: ``base``'s value where set (default: this process's environment), else lmwright's default."""
    source = os.environ if base is None else base
    return {name: source.get(name, default) for name, default in CPU_DEFAULTS.items()}


def apply_cpu_defaults() -> None:
    """Add lmwright's CPU settings to this process's environment where the user has not set them."""
    for name, value in CPU_DEFAULTS.items():
        os.environ.setdefault(name, value)
