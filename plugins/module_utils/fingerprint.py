"""Per-table fingerprints: how we prove two databases hold the same rows.

A fingerprint is, for every ordinary table of every non-system schema, the row count and an
order-independent checksum: the sum of a 64-bit hash of each row. Summing (instead of hashing a sorted
stream) needs no sort and no memory, so a 5M-row table costs one sequential scan.

Two ways to hash a row, recorded per table as ``method`` so a verifier recomputes exactly what the
manifest holds:

* ``hash`` (PostgreSQL 14+): ``hashint8extended(hash_record_extended(row, 0), 0)``, each column through
  its type's own hash function (the record hash is linear in its columns, hence the second hash). No text
  conversion, so about twice as fast on the lab's timestamp-heavy meetings (5M rows: under 3 s instead of
  5 s). Equal values hash equally, so it cannot see a change that keeps the value equal (numeric 1.0 ->
  1.00, float -0 -> 0), which a dump and restore never makes anyway.
* ``text``: ``hashtextextended(row::text, 0)``, for servers before 14 and tables with a column type that
  has no hash function (json, point, ...). The text form depends on session settings (dates, time
  zones, floats, intervals, bytea), so :func:`pin_settings` fixes them for the transaction first.

Manifests written before methods existed have none: their tables are ``text``.

Used by the backup (inside the snapshot pg_dump uses), the restore (before swapping), the smoke
checks and the fault suite, so every caller compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

try:
    from psycopg2 import sql
except ImportError:  # pragma: no cover - the module reports missing psycopg2 itself
    sql = None

# Settings that change how a row prints; SET LOCAL so they end with the transaction.
PINNED_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

# Every ordinary table (partitions included, partitioned parents excluded: their rows live in the
# partitions) outside the system schemas. Temporary schemas of other sessions are not ours.
TABLES_SQL = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast'
   AND n.nspname !~ '^pg_temp_'
 ORDER BY n.nspname, c.relname
"""

Fingerprint = dict[str, dict[str, object]]


def pin_settings(cur) -> None:
    """Make the text form of rows independent of the session's (or server's) defaults."""
    for name, value in PINNED_SETTINGS.items():
        cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))


def list_tables(cur) -> list[tuple[str, str]]:
    """Schema and name of every table the fingerprint covers, in a stable order."""
    cur.execute(TABLES_SQL)
    return [tuple(row) for row in cur.fetchall()]


def table_key(schema: str, name: str) -> str:
    """The manifest's key for a table: ``schema.table`` as written, unquoted."""
    return f"{schema}.{name}"


METHODS = ("hash", "text")
_ROW_HASH = {
    # hash_record_extended combines its columns' hashes linearly (h = 31 * h + column), so a plain sum over
    # rows would only be a per-column sum, blind to values swapped between rows: hash it once more.
    "hash": "pg_catalog.hashint8extended(pg_catalog.hash_record_extended(fp_row, 0), 0)",
    "text": "pg_catalog.hashtextextended(ROW(fp_row.*)::text, 0)",
}
# "could not identify a hash function for type json" (feature_not_supported) and, before
# PostgreSQL 14, "function hash_record_extended does not exist" (undefined_function).
_NO_ROW_HASH = {"0A000", "42883"}


def method_of(entry: dict) -> str:
    """The method a fingerprint entry was computed with (entries from before methods: text)."""
    return str(entry.get("method", "text"))


def _table_entry(cur, schema: str, name: str, method: str) -> dict[str, object]:
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {}.{} AS fp_row").format(
        sql.SQL(_ROW_HASH[method]), sql.Identifier(schema), sql.Identifier(name)
    )
    cur.execute(query)
    rows, checksum = cur.fetchone()
    return {"rows": int(rows), "checksum": checksum, "method": method}


def table_fingerprint(cur, schema: str, name: str, method: str = "auto") -> dict[str, object]:
    """Row count, checksum and method of one table.

    ``auto`` tries ``hash`` and falls back to ``text`` when the server or a column type cannot hash
    rows (inside a savepoint, so the caller's snapshot transaction survives the attempt).
    """
    if method not in ("auto", *METHODS):
        raise ValueError(f"unknown fingerprint method {method!r}")
    if method != "auto":
        return _table_entry(cur, schema, name, method)
    cur.execute("SAVEPOINT fp_hash")
    try:
        entry = _table_entry(cur, schema, name, "hash")
    except Exception as exc:
        if getattr(exc, "pgcode", None) not in _NO_ROW_HASH:
            raise
        cur.execute("ROLLBACK TO SAVEPOINT fp_hash")
        return _table_entry(cur, schema, name, "text")
    cur.execute("RELEASE SAVEPOINT fp_hash")
    return entry


def fingerprint(
    cur,
    tables: Iterable[tuple[str, str]] | None = None,
    on_table: Callable[[str, dict[str, object]], None] | None = None,
    methods: dict[str, str] | None = None,
) -> Fingerprint:
    """Fingerprint every table (or the given ones) in the cursor's current transaction.

    The caller owns the transaction: call it inside the REPEATABLE READ transaction whose snapshot
    it wants to describe. ``on_table`` is told about each table as it finishes (progress lines).
    ``methods`` pins a table's method (a verifier passes the manifest's); others are ``auto``.
    """
    pin_settings(cur)
    result: Fingerprint = {}
    for schema, name in list_tables(cur) if tables is None else tables:
        key = table_key(schema, name)
        result[key] = table_fingerprint(cur, schema, name, (methods or {}).get(key, "auto"))
        if on_table is not None:
            on_table(key, result[key])
    return result


def database_fingerprint(conn, methods: dict[str, str] | None = None) -> Fingerprint:
    """Fingerprint a whole database in one fresh REPEATABLE READ, read-only transaction."""
    old_autocommit = conn.autocommit
    conn.autocommit = False
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            return fingerprint(cur, methods=methods)
    finally:
        conn.rollback()
        conn.set_session(isolation_level="DEFAULT", readonly="DEFAULT")
        conn.autocommit = old_autocommit


def compare(expected: Fingerprint, actual: Fingerprint) -> list[str]:
    """Human-readable differences, empty when equal. Tables missing on either side count."""
    problems: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            problems.append(f"{key}: missing (expected {expected[key]['rows']} rows)")
        elif key not in expected:
            problems.append(f"{key}: unexpected table ({actual[key]['rows']} rows)")
        elif expected[key]["rows"] != actual[key]["rows"]:
            problems.append(f"{key}: {actual[key]['rows']} rows, expected {expected[key]['rows']}")
        elif method_of(expected[key]) != method_of(actual[key]):
            problems.append(
                f"{key}: fingerprinted by {method_of(actual[key])}, expected {method_of(expected[key])}"
            )
        elif str(expected[key]["checksum"]) != str(actual[key]["checksum"]):
            problems.append(f"{key}: same row count ({actual[key]['rows']}) but different contents")
    return problems


def expected_methods(expected: Fingerprint) -> dict[str, str]:
    """Each table's method in a manifest's fingerprint: what a verifier must recompute."""
    return {key: method_of(entry) for key, entry in expected.items()}


def parallel_fingerprint(
    connect_fn: Callable[[], object], jobs: int = 2, methods: dict[str, str] | None = None
) -> Fingerprint:
    """Fingerprint a database nobody writes to with ``jobs`` connections, biggest tables first.

    Only for a quiescent database (a sealed snapshot clone): the tables are read in different
    transactions, which is the same as one snapshot only when nothing changes meanwhile. On two
    cores this roughly halves the restore's verification, which is most of a snapshot swap's time.
    """
    from concurrent.futures import ThreadPoolExecutor  # psycopg2 releases the GIL while it waits

    first = connect_fn()
    try:
        with first.cursor() as cur:
            cur.execute(
                TABLES_SQL.replace("SELECT n.nspname, c.relname", "SELECT n.nspname, c.relname, c.relpages")
            )
            tables = [(schema, name) for schema, name, _pages in sorted(cur.fetchall(), key=lambda r: -r[2])]
    finally:
        first.close()
    pending = list(tables)

    def worker() -> Fingerprint:
        conn = connect_fn()
        try:
            found: Fingerprint = {}
            while pending:
                try:
                    schema, name = pending.pop(0)
                except IndexError:
                    break
                conn.autocommit = False
                with conn.cursor() as cur:
                    pin_settings(cur)
                    key = table_key(schema, name)
                    found[key] = table_fingerprint(cur, schema, name, (methods or {}).get(key, "auto"))
                conn.rollback()
            return found
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        parts = [pool.submit(worker) for _job in range(max(jobs, 1))]
        result: Fingerprint = {}
        for part in parts:
            result.update(part.result())
    return dict(sorted(result.items()))
