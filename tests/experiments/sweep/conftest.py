"""A PostgreSQL server for the shared-study tests, started once per session (see ``_postgres.py``).

Without PostgreSQL binaries the tests that need the server are skipped, except under CI (``CI=true``), where
``.ci/run`` installs them (``scripts/install_postgres.sh``) and a missing server is a failure.
"""

from __future__ import annotations

import os

import pytest

from tests.experiments.sweep._postgres import PostgresServer, find_bindir


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl): run scripts/install_postgres.sh or put them on PATH"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {reason}.")
        pytest.skip(reason)
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a fresh, empty database (as documented: ``postgresql://``, the driver chosen by cmkd-sweep)."""
    return postgres_server.url(postgres_server.create_database())
