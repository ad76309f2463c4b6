"""A finished thing on disk: the one pointer every stage hands on.

Every stage writes ``<workdir>/<area>/<stage>/<fingerprint>/`` (``tasks.core.stage.plan_stage``)
and hands on a ref to it: the stage that made it, its fingerprint and its directory. Tasks return
refs, flows pass them to each other, Prefect persists them (``tasks.core.results``: the class and
these three fields, as typed JSON). The kinds (``DatasetRef``, ``TokenDatasetRef``, ``ModelRef``,
``SftDatasetRef``) add only readers for what their directory holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

R = TypeVar("R", bound="Ref")


@dataclass(frozen=True)
class Ref:
    """Which stage made it, its fingerprint, where it is."""

    stage: str
    fingerprint: str
    path: str

    @classmethod
    def at(cls: type[R], directory: str | os.PathLike[str]) -> R:
        """The ref to ``<...>/<stage>/<fingerprint>``: both are read from the directory's name."""
        d = Path(directory)
        return cls(stage=d.parent.name, fingerprint=d.name, path=str(d))

    @property
    def dir(self) -> Path:
        return Path(self.path)
