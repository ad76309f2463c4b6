"""Pictures beside the cards: PNG files written with matplotlib's Agg backend, and the same PNG as a Prefect artifact.

Agg draws without a display (servers, workers, CI). The artifact carries the image itself as a
``data:`` URL, so the Prefect UI shows it without a file server and it stays valid after the
workdir moves.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.artifacts import create_image_artifact

from lmwright.tasks.core.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(width: float = 6.0, height: float = 3.5) -> tuple[Figure, Axes]:
    """One figure with one set of axes, on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG (atomically: a half-written picture is never left beside a card) and free it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def publish_png(path: Path, key: str, description: str) -> None:
    """The PNG as a Prefect image artifact (key: lowercase letters, digits and dashes)."""
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    create_image_artifact(image_url=url, key=key, description=description)
