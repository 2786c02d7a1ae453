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
