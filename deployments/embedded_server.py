"""The embedded Prefect server of one CLI command: lmwright starts it beside its imports and stops it at the end.

Without a Prefect server (no ``PREFECT_API_URL``), Prefect starts a temporary one the first time a
flow needs its API (``prefect.server.api.server.SubprocessASGIServer``): only then, and only after
the command's process has imported Prefect's whole server package (FastAPI, SQLAlchemy, every API
route) just to launch it. On a cached rerun that import and the wait for the server were most of
the time. lmwright launches the same server (Prefect's app, its ephemeral-server environment, SQLite
in ``PREFECT_HOME``) itself, as the first thing a pipeline command does, so the server starts while
the command imports and the command never imports the server package. The server process reads
Prefect's settings itself and exits at once when they name a server (``PREFECT_API_URL``, in the
environment or the profile) or switch ephemeral mode off; the command then uses that server, as
Prefect would. The command stops the server when it ends, after Prefect's log and event workers
have delivered what they hold, also when it fails.

Flow-run heartbeats are off while this server runs: they let a lasting server find crashed runs,
and this one ends with the command (with them, each flow run waits up to 1 s for its heartbeat
thread at its end; ``lmwright run`` has four).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

# Prefect's own environment for its temporary server (SubprocessASGIServer): no UI, ephemeral services.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
STARTUP_FAILURE = 3  # uvicorn's exit code when it cannot bind or start the app (Prefect retries a port on it)
NOT_NEEDED = 0  # the server process found a configured server (or ephemeral mode off) and exited
ACTIVE: "EmbeddedServer | None" = None  # the server of the command running in this process


class EmbeddedServer:
    """One process serving ``prefect.server.api.server:create_app`` on a free local port."""

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 180.0) -> None:
        self.env = env
        self.timeout = timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.settings: ExitStack | None = None  # Prefect pointed at this server, until the command ends

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "EmbeddedServer":
        """Launch the server process and return at once; ``wait`` blocks until it answers."""
        self.port = free_port()
        cmd = [sys.executable, "-m", "lmwright.deployments.embedded_server", str(self.port)]
        self.process = subprocess.Popen(cmd, env={**(self.env or os.environ), **SERVER_ENV})
        return self

    def wait(self) -> None:
        """Block until ``/api/health`` answers; a busy machine only makes this later, up to ``timeout``."""
        if self.process is None:
            self.start()
        deadline = time.monotonic() + self.timeout
        retries = 3
        while not self.ready and time.monotonic() < deadline:
            assert self.process is not None
            code = self.process.poll()
            if code == STARTUP_FAILURE and retries:  # e.g. another process took the port before uvicorn bound it
                retries -= 1
                self.start()
                continue
            if code is not None:
                raise RuntimeError(f"the embedded Prefect server exited with code {code} before it answered")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as response:
                    self.ready = response.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if not self.ready:
                time.sleep(0.1)
        if not self.ready:
            raise RuntimeError(
                f"Timed out after {self.timeout:.0f} s waiting for the embedded Prefect server "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; or start one with `prefect server start` "
                "and set PREFECT_API_URL)"
            )

    def stop(self) -> None:
        """As Prefect stops its temporary server: terminate, then kill after 5 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain_workers() -> None:
    """Deliver the logs and events (task run states) Prefect still holds, before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=30)
        except RuntimeError:  # never started
            pass


def needs_server(settings: Any) -> bool:
    """Whether Prefect would start its temporary server: no API URL configured, ephemeral mode on."""
    return not settings.api.url and bool(settings.server.ephemeral.enabled)


def point_prefect_at(server: EmbeddedServer, stack: ExitStack) -> None:
    """This process's Prefect settings: the server's API URL, no UI links, no flow-run heartbeats."""
    import prefect.context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        get_current_settings,
        temporary_settings,
    )

    settings = get_current_settings()
    updates: dict[Any, Any] = {PREFECT_API_URL: server.api_url}
    if not settings.ui_url:  # as with Prefect's temporary server: no "View at <UI>" lines, it serves no UI
        updates[PREFECT_UI_URL] = ""
    if "heartbeat_frequency" not in settings.flows.model_fields_set:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    stack.enter_context(temporary_settings(updates=updates))
    # Threads that do not copy this context (Prefect's event loop thread) read the global one.
    global_context: Any = getattr(prefect.context, "_temporary_global_settings_context", None)
    if global_context is not None:
        stack.enter_context(global_context(prefect.context.get_settings_context()))


@contextmanager
def embedded_server() -> Iterator[EmbeddedServer | None]:
    """Start the server if this process would otherwise get Prefect's temporary one.

    Yields the server or None when Prefect has a server to use. ``wait_for_server()`` before the
    first flow blocks until it answers and points Prefect at it. The server is stopped when the
    block ends, also on errors."""
    global ACTIVE
    # Launched before Prefect is imported here (a second or more); the server process decides for itself.
    early = None if "prefect" in sys.modules or os.environ.get("PREFECT_API_URL") else EmbeddedServer().start()
    server = early
    try:
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if not needs_server(settings):
            yield None
            return
        if server is None:  # Prefect was imported already (a caller in Python): launched by wait_for_server()
            # Settings made in this process (not in the environment) reach the server as Prefect passes them.
            server = EmbeddedServer(env={**os.environ, **settings.to_environment_variables(exclude_unset=True)})
        server.timeout = float(settings.server.ephemeral.startup_timeout_seconds)
        with ExitStack() as stack:
            server.settings = stack
            ACTIVE = server
            try:
                yield server
            finally:
                ACTIVE = None
                if server.ready:
                    drain_workers()
    finally:
        if server is not None:
            server.stop()


@contextmanager
def command_server(command: str, commands: Any) -> Iterator[EmbeddedServer | None]:
    """``embedded_server()`` for the commands that run flows, nothing for the others."""
    if command not in commands:
        yield None
        return
    with embedded_server() as server:
        yield server


def wait_for_server() -> None:
    """Before the first flow: block until this command's embedded server answers, then point Prefect at it.
    Without one (a configured server), nothing."""
    server = ACTIVE
    if server is None or server.ready:
        return
    server.wait()
    assert server.settings is not None
    point_prefect_at(server, server.settings)


def blocks_registered(settings: Any) -> bool:
    """Whether Prefect registered its block types in this database before (it then keeps a hash in its memo store).

    Each start checks that hash again, and computing it imports every installed Prefect collection
    (prefect-dask: dask and distributed), a second or more. A database that has its block types
    skips the check; a new one (or a new PREFECT_HOME) is registered as always."""
    memo = Path(settings.server.memo_store_path or Path(settings.home) / "memo_store.toml")
    try:
        return "block_auto_registration" in memo.read_text()
    except OSError:
        return False


def serve(port: int) -> int:
    """The server process: Prefect's API app under uvicorn, as ``SubprocessASGIServer`` runs it."""
    from prefect.settings import (
        PREFECT_API_BLOCKS_REGISTER_ON_START,
        PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION,
        get_current_settings,
        temporary_settings,
    )

    settings = get_current_settings()
    if not needs_server(settings):
        return NOT_NEEDED
    import uvicorn

    skip = {PREFECT_API_BLOCKS_REGISTER_ON_START: False, PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION: False}
    with temporary_settings(updates=skip if blocks_registered(settings) else {}):
        uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                    log_level="error", lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
