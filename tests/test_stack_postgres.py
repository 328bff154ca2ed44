"""`mlex-tomo up` with `postgres.embedded`: Tiled's catalog and Prefect's database on a real PostgreSQL under data_dir."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg
import numpy as np
import pytest
from tiled.client import from_uri

from tests.services import RunningStack, free_ports
from tests.test_flows import run

pytestmark = pytest.mark.stack

POSTGRES_MISSING = shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture(scope="module")
def data_dir():
    """Under /tmp with room for others: as root the server runs as Debian's `postgres` user, which must reach it."""
    folder = Path(tempfile.mkdtemp(prefix="mlex-postgres-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def rows(settings, database: str, query: str) -> list:
    async def fetch():
        connection = await asyncpg.connect(
            host=settings.postgres.host, port=settings.postgres.port, user=settings.postgres.user,
            password=settings.postgres_password_path.read_text().strip(), database=database,
        )
        try:
            return await connection.fetch(query)
        finally:
            await connection.close()

    return asyncio.run(fetch())


@pytest.mark.skipif(POSTGRES_MISSING, reason="PostgreSQL is not installed (make test installs postgresql)")
def test_tiled_and_prefect_keep_their_state_in_the_embedded_postgres_across_restarts(data_dir):
    (port,) = free_ports(1)
    stack = RunningStack(data_dir)
    stack.settings_arguments += ["--postgres.embedded", "true", "--postgres.port", str(port)]
    with stack:
        status = stack.cli("status")
        assert status.stdout.splitlines()[0].split()[:2] == ["postgres", "up"], status.stdout
        settings = stack.settings
        tiled = from_uri(settings.tiled.base_url, api_key=settings.tiled.api_key.get_secret_value())
        tiled["recons"].create_container("kept").write_array(np.arange(8, dtype=np.uint8).reshape(2, 4), key="data")
        flow_run = run(stack, {"data": "recons/kept", "steps": "infer", "trained_job_id": "never-trained", "device": "cpu"})
        assert flow_run.state.is_failed()  # a run recorded, whatever its end
    assert not (data_dir / "tiled" / "catalog.db").exists() and not (data_dir / "prefect" / "prefect.db").exists()
    assert (data_dir / "postgres" / "cluster" / "PG_VERSION").is_file()
    assert oct(settings.postgres_password_path.stat().st_mode & 0o777) == "0o600"

    with stack:  # the same data directory: the same cluster, nothing lost
        settings = stack.settings
        tiled = from_uri(settings.tiled.base_url, api_key=settings.tiled.api_key.get_secret_value())
        assert tiled["recons"]["kept"]["data"].read().tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        assert [row["id"] for row in rows(settings, "prefect", "SELECT id FROM flow_run")] == [flow_run.id]
        assert rows(settings, "tiled", "SELECT count(*) AS nodes FROM nodes")[0]["nodes"] >= 4
