"""Files shipped with lmwright: the presets and lexicons under ``configs/``, found wherever lmwright is installed."""

from __future__ import annotations

from pathlib import Path

# The lmwright root: the repository in a checkout, site-packages/lmwright in a wheel install.
# Both hold configs/ beside flows/ and tasks/.
ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"


def shipped_or_local(path: str | Path) -> Path:
    """An absolute path as is; a relative one against the working directory, else under the lmwright root (configs/...)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return ROOT / p
