"""Live progress of long steps: a terminal line and a Prefect progress artifact.

A user waits minutes to hours for training, evaluation and the data stages; each of
them reports ``done / total`` here as it goes. The terminal line is rewritten in place
on a terminal and printed as a new line every ``LINE_SECONDS`` elsewhere (logs, CI);
the artifact follows the same fraction, so the UI and the terminal agree.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Callable, TextIO

# How often the terminal hears from a running step; a terminal redraws its one line faster.
LINE_SECONDS = 15.0
TTY_SECONDS = 2.0
ARTIFACT_SECONDS = 5.0


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class LiveProgress:
    """``update(done, **fields)`` as often as you like; output is throttled.

    ``unit`` names what is counted (steps, blocks, shards) and sets the rate's unit;
    ``fields`` (loss=..., lr=...) are shown after the rate. ``rate_scale`` turns the
    counted unit into the rate's (e.g. tokens per step, for tokens/s).
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "steps",
        artifact_key: str | None = None,
        stream: TextIO | None = None,
        rate_unit: str | None = None,
        rate_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, max(1, total), unit
        self.rate_unit, self.rate_scale = rate_unit or unit, rate_scale
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.started = clock()
        self.first_done: int | None = None
        self.printed_at = self.artifact_at = float("-inf")
        self.artifact_id = _create_artifact(artifact_key, label) if artifact_key else None
        self.last_line = ""
        self.shown_done: int | None = None

    def set_total(self, total: int) -> None:
        """The budget changed (e.g. the run stops early): the bar and the artifact follow the real end."""
        self.total = max(1, total)

    def due(self) -> bool:
        """Whether the next ``update`` would show anything (so callers can skip computing its fields)."""
        now = self.clock()
        return (now - self.printed_at >= (TTY_SECONDS if self.tty else LINE_SECONDS)) or (
            self.artifact_id is not None and now - self.artifact_at >= ARTIFACT_SECONDS
        )

    def update(self, done: int, force: bool = False, **fields: Any) -> None:
        now = self.clock()
        if self.first_done is None:
            self.first_done, self.started = done, now
        if force or now - self.printed_at >= (TTY_SECONDS if self.tty else LINE_SECONDS):
            self.printed_at, self.shown_done = now, done
            self._print(self.line(done, now, fields))
        if self.artifact_id is not None and (force or now - self.artifact_at >= ARTIFACT_SECONDS):
            self.artifact_at = now
            _update_artifact(self.artifact_id, 100.0 * min(done, self.total) / self.total)

    def finish(self, done: int, **fields: Any) -> None:
        self.set_total(done if done > 0 else self.total)
        if done != self.shown_done:
            self.update(done, force=True, **fields)
        elif self.artifact_id is not None:
            _update_artifact(self.artifact_id, 100.0)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, done: int, now: float, fields: dict[str, Any]) -> str:
        pct = 100.0 * min(done, self.total) / self.total
        elapsed = now - self.started
        counted = done - (self.first_done or 0)  # a resumed run's rate counts this attempt's work only
        rate = counted / elapsed if elapsed > 0 and counted > 0 else 0.0
        parts = [f"{self.label} {done}/{self.total} {self.unit} ({pct:.0f}%)"]
        if rate > 0:
            parts.append(f"{rate * self.rate_scale:,.0f} {self.rate_unit}/s")
        parts += [f"{k} {_fmt(v)}" for k, v in fields.items() if v is not None]
        if rate > 0 and done < self.total:
            parts.append(f"ETA {format_seconds((self.total - done) / rate)}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        return "  ".join(parts)

    def _print(self, line: str) -> None:
        self.last_line = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _create_artifact(key: str, label: str) -> Any:
    """A Prefect progress artifact when running inside a flow; None elsewhere (plain scripts, tests)."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    from prefect.artifacts import create_progress_artifact

    # Artifact keys allow lowercase letters, digits and dashes only; stage names have underscores (dedup_previous).
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower())
    return create_progress_artifact(progress=0.0, key=key, description=f"{label}: share done")


def _update_artifact(artifact_id: Any, pct: float) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(artifact_id, progress=pct)


class _RoutineStateLines(logging.Filter):
    """Drops the engine's per-task 'Finished in state Completed()/Cached()' and 'Created task run' lines.

    With a live line per stage they are noise: a 300-shard stage printed 300 of them.
    Failures, retries, warnings and the stages' own messages still show.
    """

    ROUTINE = ("Finished in state Completed()", "Finished in state Cached(", "Created task run")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(message.startswith(r) for r in self.ROUTINE)


def quiet_routine_task_lines() -> None:
    """On the terminal only (the Prefect API still receives every log line)."""
    import prefect.main  # noqa: F401 - configures Prefect's logging (a bare `import prefect` does not)

    # Prefect's console handler sits on the root logger; its run loggers propagate to it.
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        if not any(isinstance(f, _RoutineStateLines) for f in handler.filters):
            handler.addFilter(_RoutineStateLines())
