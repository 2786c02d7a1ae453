"""The fixture cluster itself: password auth over TCP is real, trust is not offered there."""

from contextlib import closing

import psycopg2
import pytest
from pgcluster import APP, MIGRATOR


def test_roles_authenticate_with_scram_over_tcp(pg, dbname):
    with closing(pg.connect(dbname)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (MIGRATOR, False)


def test_wrong_password_is_refused(pg, dbname):
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        pg.connect(dbname, user=APP, password="wrong")


def test_connect_when_up_waits_for_a_server_that_is_down_but_not_for_a_wrong_password(pg, dbname):
    import time

    from ansible_collections.pgmigrate.pipeline.plugins.module_utils import pgconn
    from pgcluster import free_port

    down = pgconn.ConnInfo("127.0.0.1", free_port(), dbname, MIGRATOR, "x", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="refused"):
        pgconn.connect_when_up(down, wait_seconds=1.5, interval=0.3)
    assert time.monotonic() - started >= 1.5
    wrong = pgconn.ConnInfo("127.0.0.1", pg.port, dbname, MIGRATOR, "wrong", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        pgconn.connect_when_up(wrong, wait_seconds=30)
    assert time.monotonic() - started < 5
