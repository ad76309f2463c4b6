"""Prefect on PostgreSQL instead of SQLite: start PostgreSQL on 127.0.0.1, a Prefect server on it, run a flow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.test_server_e2e import ROOT, free_port, stop, wait_until

pytestmark = pytest.mark.e2e
PG_BIN = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    versions = sorted(PG_BIN.glob("*/bin/pg_ctl")) if PG_BIN.exists() else []
    return versions[-1].parent if versions else None


def as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root; run its tools as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs the 'postgresql' package)")
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="lmwright-pgdata-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
                   check=True, capture_output=True)
    subprocess.run(as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                               "-o", f"-p {port} -h 127.0.0.1 -k {data}", "start"), check=True, capture_output=True)
    try:
        subprocess.run(as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"),
                       check=True, capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"), capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_flow_runs_through_a_prefect_server_backed_by_postgres(postgres: str, tmp_path: Path, shared_data: Path) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
           "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": api}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server")
        src = shared_data / "web" / "c4_en_sample_olmo.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "lmwright.deployments.cli", "curate", "--source", str(src), "--workdir", str(tmp_path / "w"),
             "--set", "quality.gopher_quality.min_doc_words=20"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        assert any(r["state_type"] == "COMPLETED" for r in runs)
        # The runs live in PostgreSQL, not in a SQLite file.
        assert not list((tmp_path / "home").glob("*.db"))
        bin_dir = pg_bin()
        port_pg = postgres.rsplit(":", 1)[1].split("/")[0]
        count = subprocess.run(
            as_postgres(str(bin_dir.parent / "bin" / "psql") if (bin_dir / "psql").exists() else "psql",
                        "-h", "127.0.0.1", "-p", port_pg, "-U", "postgres", "-d", "prefect", "-tAc",
                        "select count(*) from flow_run where state_type = 'COMPLETED'"),
            capture_output=True, text=True, check=True,
        )
        assert int(count.stdout.strip()) >= 1
    finally:
        stop(server)
