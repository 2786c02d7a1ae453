"""`make bench`: the pipeline at realistic scale, side by side with the plain tools, in one run.

Why it is built this way:

* Every figure is measured in the same run, on the same data, on the same machine, right next to its
  plain counterpart, and reported as absolute seconds plus a ratio: a ratio survives a faster or slower
  machine, absolute times alone do not.
* It uses the real lab (playbooks/lab.yml with its own inventory: port 56116, folder .lab/bench), the real
  modules (module_utils.backup / restore, exactly what the roles call) and the real playbook
  (migrate.yml through ansible-playbook), so what is measured is what users run.
* Passwords reach the tools through a private pgpass file (pgconn.pgpass_env), never argv.

Figures (issue 7): backup vs pg_dump -Fc; rollback (failure detected -> verified database in place) vs
pg_restore into an empty database; online mode, the worst and p99 latency of an application writer
(pgbench, bench/online_writer.sql) through the whole chain, beside the naive statements
(bench/naive_chain.sql); the migration window vs a bare `alembic upgrade head`; the orchestration
overhead of migrate.yml on an empty database vs the bare commands it wraps.

    python bench/run.py [--scale large] [--keep-lab] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / ".cache" / "collections"))  # the checkout as pgmigrate.pipeline (make venv)

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import (  # noqa: E402
    alembic_runner,
    backup,
    restore,
)
from ansible_collections.pgmigrate.pipeline.plugins.module_utils.pgconn import (  # noqa: E402
    ConnInfo,
    connect,
    pgpass_env,
)

INVENTORY = ROOT / "bench" / "inventory"
WRITER_SCRIPT = ROOT / "bench" / "online_writer.sql"
NAIVE_CHAIN = ROOT / "bench" / "naive_chain.sql"
GOALS = {"rollback": 0.15, "window": 1.3, "online_worst_ms": 250}


@dataclass
class Target:
    """The benchmark database and how to reach it (passwords only ever in memory and pgpass files)."""

    ci: ConnInfo
    inventory: Path | None = None  # the ansible inventory whose host is this database
    app: ConnInfo | None = None  # the application role, for the online writer

    def with_db(self, name: str) -> ConnInfo:
        return self.ci.with_db(name)


def load_target(inventory: Path = INVENTORY) -> Target:
    data = yaml.safe_load((inventory / "group_vars" / "bench" / "vars.yml").read_text())
    ci = ConnInfo(
        host=data["db_host"],
        port=int(data["db_port"]),
        dbname=data["db_name"],
        user=data["db_migration_user"],
        password=data["db_migration_password"],
    )
    app = ConnInfo(
        host=ci.host,
        port=ci.port,
        dbname=ci.dbname,
        user=data["db_app_user"],
        password=data["db_app_password"],
    )
    return Target(ci=ci, inventory=inventory, app=app)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.monotonic()
    value = fn()
    return round(time.monotonic() - start, 3), value


def ratio(a: float, b: float) -> float | None:
    """a/b to three decimals, or to two significant figures when that would round it to 0."""
    if not b:
        return None
    r = a / b
    return round(r, 3) if abs(r) >= 0.01 else float(f"{r:.2g}")


def run(argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + proc.stderr[-2000:]).strip()
        raise RuntimeError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}):\n{tail}")
    return proc


def sql(target: Target, statement: str, dbname: str = "postgres") -> None:
    with contextlib.closing(connect(target.with_db(dbname))) as conn, conn.cursor() as cur:
        cur.execute(statement)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def scratch_database(target: Target, name: str, template: str | None = None) -> Iterator[str]:
    """A database made for one measurement and dropped afterwards, whatever happens."""
    clause = f" TEMPLATE {quoted(template)} STRATEGY FILE_COPY" if template else " TEMPLATE template0"
    sql(target, f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")
    sql(target, f"CREATE DATABASE {quoted(name)}{clause}")
    try:
        yield name
    finally:
        sql(target, f"DROP DATABASE IF EXISTS {quoted(name)} WITH (FORCE)")


def tool_env(ci: ConnInfo) -> contextlib.AbstractContextManager[dict]:
    return pgpass_env(ci)


def pg_dump(ci: ConnInfo, path: Path) -> None:
    with tool_env(ci) as env:
        run([backup.pg_tool("pg_dump"), "-Fc", "--no-password", f"--file={path}"], env=env)


def pg_restore(ci: ConnInfo, path: Path, jobs: int) -> None:
    with tool_env(ci) as env:
        run(
            [
                backup.pg_tool("pg_restore"),
                "--no-password",
                f"--jobs={jobs}",
                f"--dbname={ci.dbname}",
                str(path),
            ],
            env=env,
        )


def alembic_upgrade(ci: ConnInfo, revision: str = "head") -> None:
    with tool_env(ci) as env:
        env = {**env, "DATABASE_URL": ci.sqlalchemy_url()}
        run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", revision], env=env)


# --- the figures ------------------------------------------------------------------------------------


def measure_backup(target: Target, work: Path) -> dict:
    """Plain pg_dump -Fc vs the pipeline's backup step (clone, then dump+fingerprint+verify of the clone)."""
    plain_seconds, _ = timed(lambda: pg_dump(target.ci, work / "plain.dump"))
    backups = work / "backups"
    clone_seconds, snap = timed(lambda: backup.take_snapshot(target.ci))
    if not snap["snapshot_database"]:
        raise RuntimeError(f"no clone: {snap['snapshot_skipped']}")
    request = backup.BackupRequest(
        environment="bench", directory=str(backups), source_database=snap["snapshot_database"]
    )
    dump_seconds, result = timed(lambda: backup.run_backup(target.ci, request))
    return {
        "plain_pg_dump_seconds": plain_seconds,
        "plain_archive_bytes": (work / "plain.dump").stat().st_size,
        "clone_seconds": clone_seconds,
        "dump_of_clone_seconds": dump_seconds,
        "pipeline_total_seconds": round(clone_seconds + dump_seconds, 3),
        "critical_path_seconds": clone_seconds,
        "ratio_total": ratio(clone_seconds + dump_seconds, plain_seconds),
        "ratio_critical_path": ratio(clone_seconds, plain_seconds),
        "manifest_path": result["manifest_path"],
        "archive_bytes": result["size_bytes"],
    }


def measure_rollback(target: Target, work: Path, manifest_path: str, jobs: int = 2) -> dict:
    """Plain pg_restore into an empty database vs the restore step (swap of the verified clone), and the
    restore step's own fallback (pg_restore -j + verify + swap) for reference."""
    with scratch_database(target, "bench_plain_restore") as name:
        plain_seconds, _ = timed(lambda: pg_restore(target.with_db(name), work / "plain.dump", jobs))
    fast_seconds, fast = timed(
        lambda: restore.run_restore(target.ci, restore.RestoreRequest(manifest_path=manifest_path, jobs=jobs))
    )
    if fast["method"] != "snapshot":
        raise RuntimeError(f"the restore did not use the clone: {fast['snapshot_note']}")
    forensic = fast["forensic_database"]
    if forensic:
        sql(target, f"DROP DATABASE IF EXISTS {quoted(forensic)} WITH (FORCE)")
    slow_seconds, slow = timed(
        lambda: restore.run_restore(
            target.ci, restore.RestoreRequest(manifest_path=manifest_path, jobs=jobs, use_snapshot=False)
        )
    )
    if slow["forensic_database"]:
        sql(target, f"DROP DATABASE IF EXISTS {quoted(slow['forensic_database'])} WITH (FORCE)")
    return {
        "plain_pg_restore_seconds": plain_seconds,
        "pg_restore_jobs": jobs,
        "pipeline_rollback_seconds": fast_seconds,
        "pipeline_verify_seconds": fast["verify_seconds"],
        "pipeline_swap_seconds": fast["swap_seconds"],
        "ratio": ratio(fast_seconds, plain_seconds),
        "goal": GOALS["rollback"],
        "met": ratio(fast_seconds, plain_seconds) <= GOALS["rollback"],
        "fallback_pg_restore_rollback_seconds": slow_seconds,
        "fallback_ratio": ratio(slow_seconds, plain_seconds),
    }


# --- online mode: the application's latency through the chain ----------------------------------------


class Writer:
    """The application during an online run: pgbench runs WRITER_SCRIPT as the application role, in
    back-to-back segments of ``segment`` seconds (pgbench needs its duration up front; the chain's is
    unknown), logging every transaction's latency. Stopping lets the running segment finish."""

    def __init__(
        self,
        ci: ConnInfo,
        work: Path,
        sizes: dict[str, int],
        clients: int = 4,
        rate: int = 100,
        segment: int = 10,
    ):
        self.ci, self.work, self.sizes = ci, work, sizes
        self.clients, self.rate, self.segment = clients, rate, segment
        self.work.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with tool_env(self.ci) as env:
            n = 0
            while not self.stop.is_set():
                n += 1
                argv = [
                    backup.pg_tool("pgbench"),
                    "--no-vacuum",
                    f"--file={WRITER_SCRIPT}",
                    *(f"--define={table}={rows}" for table, rows in self.sizes.items()),
                    f"--client={self.clients}",
                    "--jobs=2",
                    f"--rate={self.rate}",
                    f"--time={self.segment}",
                    "--log",
                    f"--log-prefix={self.work / f'seg{n:04d}'}",
                    f"--host={self.ci.host}",
                    f"--port={self.ci.port}",
                    f"--username={self.ci.user}",
                    self.ci.dbname,
                ]
                proc = subprocess.run(
                    argv, env=env, cwd=self.work, capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    self.errors.append((proc.stderr.strip().splitlines() or ["?"])[-1])

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def latencies_ms(self) -> list[float]:
        """Per-transaction latency (pgbench's log: client, txn, latency_us, script, epoch, us[, lag])."""
        found: list[float] = []
        for log in sorted(self.work.glob("seg*")):
            for line in log.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 6 and fields[2].isdigit():
                    found.append(int(fields[2]) / 1000)
        return found


def latency_figures(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"transactions": 0}

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "transactions": len(ordered),
        "worst_ms": round(ordered[-1], 1),
        "p99_ms": pct(0.99),
        "p50_ms": pct(0.50),
        "over_250ms": sum(1 for v in ordered if v > 250),
    }


def naive_revisions() -> list[tuple[str, str]]:
    """(revision, SQL) blocks of NAIVE_CHAIN, split at its '-- revision NNNN' comments."""
    blocks: list[tuple[str, str]] = []
    for line in NAIVE_CHAIN.read_text().splitlines():
        if line.startswith("-- revision "):
            blocks.append((line.split()[2].rstrip(":"), ""))
        elif blocks and not line.startswith("--"):
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + line + "\n")
    return blocks


def run_naive(ci: ConnInfo) -> dict[str, float]:
    """Each naive revision in one transaction, timed."""
    seconds: dict[str, float] = {}
    with contextlib.closing(connect(ci)) as conn:
        conn.autocommit = False
        for revision, statements in naive_revisions():
            took, _ = timed(lambda statements=statements: conn.cursor().execute(statements))
            conn.commit()
            seconds[revision] = took
    return seconds


def migration_step_settings() -> tuple[alembic_runner.Options, int, float]:
    """db_migrate's defaults, so the online figure is the pipeline's migration step as shipped."""
    d = yaml.safe_load((ROOT / "roles" / "db_migrate" / "defaults" / "main.yml").read_text())
    options = alembic_runner.Options(
        lock_timeout=str(d["db_migrate_lock_timeout"]),
        statement_timeout=str(d["db_migrate_statement_timeout"]),
        batch_size=int(d["db_migrate_batch_size"]),
        batch_sleep=str(d["db_migrate_batch_sleep"]),
    )
    return options, int(d["db_migrate_lock_retries"]), float(d["db_migrate_lock_retry_delay"])


def measure_online(target: Target, work: Path, segment: int = 10, batch_size: int | None = None) -> dict:
    """pgbench through the pipeline's migration step (the chain as db_migrate runs it) on one copy of the
    data, and through the naive statements on another; worst and p99 transaction latency of each."""
    assert target.app is not None
    options, retries, delay = migration_step_settings()
    if batch_size:  # a comparison run (--online-batch-size); the default is db_migrate's online batch size
        options = dataclasses.replace(options, batch_size=batch_size)
    rows = database_facts(target)["rows"]
    sizes = {"users": max(rows["users"], 1), "meetings": max(rows["meetings"], 1)}
    results: dict = {"writer": {"clients": 4, "rate_tps": 100, "script": WRITER_SCRIPT.name}}
    with scratch_database(target, "bench_online_pipeline", template=target.ci.dbname) as name:
        with Writer(target.app.with_db(name), work / "writer-pipeline", sizes, segment=segment) as writer:
            time.sleep(2)
            seconds, result = timed(
                lambda: alembic_runner.upgrade(
                    str(ROOT / "alembic.ini"),
                    target.with_db(name),
                    options=options,
                    lock_retries=retries,
                    lock_retry_delay=delay,
                )
            )
        if result["failed"]:
            raise RuntimeError(f"the chain failed under the writer: {result['msg']}")
        results["pipeline"] = {
            "chain_seconds": seconds,
            "batch_size": options.batch_size,
            "retries": len(result["retries"]),
            "writer_errors": writer.errors,
            **latency_figures(writer.latencies_ms()),
        }
    with scratch_database(target, "bench_online_naive", template=target.ci.dbname) as name:
        with Writer(target.app.with_db(name), work / "writer-naive", sizes, segment=segment) as writer:
            time.sleep(2)
            seconds, per_revision = timed(lambda: run_naive(target.with_db(name)))
        results["naive"] = {
            "chain_seconds": seconds,
            "revision_seconds": per_revision,
            "writer_errors": writer.errors,
            **latency_figures(writer.latencies_ms()),
        }
    worst = results["pipeline"].get("worst_ms", float("inf"))
    results["goal_worst_ms"] = GOALS["online_worst_ms"]
    results["met"] = worst <= GOALS["online_worst_ms"] and not results["pipeline"]["writer_errors"]
    return results


def ansible_env(work: Path) -> dict:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
    }


def migrate_playbook(target: Target, work: Path, dbname: str, tag: str, mode: str = "") -> tuple[float, dict]:
    """migrate.yml through ansible-playbook on one database; wall time and the run report."""
    reports = work / f"reports-{tag}"
    argv = [
        "ansible-playbook",
        "-i",
        str(target.inventory),
        *(["-e", f"db_preflight_mode={mode}"] if mode else []),
        "-e",
        f"db_name={dbname}",
        "-e",
        f"db_report_dir={reports}",
        "-e",
        f"db_backup_dir={work / f'backups-{tag}'}",
        str(ROOT / "playbooks" / "migrate.yml"),
    ]
    seconds, _ = timed(lambda: run(argv, env=ansible_env(work)))
    found = sorted(reports.glob("*.json"))
    report = json.loads(found[-1].read_text()) if found else {}
    return seconds, report


def measure_window(target: Target, work: Path) -> dict:
    """A bare `alembic upgrade head` on a clone vs migrate.yml in offline mode on the database itself (same
    data). The window is what the application sees: CONNECT revoked -> given back (the report's
    frozen_seconds); the whole playbook's wall time is reported beside it."""
    with scratch_database(target, "bench_bare_upgrade", template=target.ci.dbname) as name:
        bare_seconds, _ = timed(lambda: alembic_upgrade(target.with_db(name)))
    pipeline_seconds, report = migrate_playbook(target, work, target.ci.dbname, "window", mode="offline")
    frozen = report.get("frozen_seconds")
    if report.get("outcome") != "succeeded" or frozen is None:
        raise RuntimeError(
            f"the window run did not succeed frozen: {report.get('outcome')} {report.get('error')}"
        )
    return {
        "bare_alembic_seconds": bare_seconds,
        "frozen_seconds": frozen,
        "pipeline_playbook_seconds": pipeline_seconds,
        "pipeline_step_seconds": report.get("timings", {}),
        "outcome": report.get("outcome"),
        "ratio": ratio(frozen, bare_seconds),
        "ratio_whole_run": ratio(pipeline_seconds, bare_seconds),
        "goal": GOALS["window"],
        "met": ratio(frozen, bare_seconds) <= GOALS["window"],
    }


def measure_overhead(target: Target, work: Path) -> dict:
    """migrate.yml on an empty database vs the bare commands it wraps (pg_dump -Fc + alembic upgrade)."""
    with scratch_database(target, "bench_empty_bare") as name:
        ci = target.with_db(name)
        bare_seconds, _ = timed(lambda: (pg_dump(ci, work / "empty.dump"), alembic_upgrade(ci)))
    with scratch_database(target, "bench_empty_pipeline") as name:
        sql(target, f"ALTER DATABASE {quoted(name)} OWNER TO {quoted(target.ci.user)}")
        pipeline_seconds, report = migrate_playbook(target, work, name, "overhead")
    return {
        "bare_seconds": bare_seconds,
        "pipeline_playbook_seconds": pipeline_seconds,
        "outcome": report.get("outcome"),
        "pipeline_step_seconds": report.get("timings", {}),
        "overhead_seconds": round(pipeline_seconds - bare_seconds, 3),
        "ratio": ratio(pipeline_seconds, bare_seconds),
    }


def machine() -> dict:
    """What the figures were measured on (they mean little without it)."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), ""
    )
    meminfo = Path("/proc/meminfo").read_text().split() if Path("/proc/meminfo").exists() else []
    mem_gb = round(int(meminfo[1]) / 1024 / 1024, 1) if len(meminfo) > 1 else 0.0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "postgresql": run([backup.pg_tool("pg_dump"), "--version"]).stdout.strip(),
    }


def database_facts(target: Target) -> dict:
    with contextlib.closing(connect(target.ci)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        size = int(cur.fetchone()[0])
        counts = {}
        for table in ("users", "meetings", "meeting_participants"):
            cur.execute(f"SELECT count(*) FROM {table}")
            counts[table] = int(cur.fetchone()[0])
    return {"size_bytes": size, "size_mb": round(size / 1024 / 1024), "rows": counts}


# --- the report -------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    """The README table: one row per figure, absolute seconds and the ratio against its goal."""
    m, d = results["machine"], results.get("database", {})
    lines = [
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, {m['postgresql']}. "
        f"Database: {d.get('size_mb', '?')} MB, {d.get('rows', {})}. Run: {results['finished_at']}, "
        f"{results['total_seconds']} s measuring"
        + (
            f", {results['wall_seconds']} s end to end (lab and teardown included)."
            if "wall_seconds" in results
            else "."
        ),
        "",
        "| figure | pipeline | plain tool | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    b = results.get("backup")
    if b:
        lines.append(
            f"| backup (on the critical path: the clone) | {b['critical_path_seconds']} s "
            f"(+ {b['dump_of_clone_seconds']} s dump of the clone, off the critical path) | "
            f"pg_dump -Fc {b['plain_pg_dump_seconds']} s | {b['ratio_critical_path']}x "
            f"(total {b['ratio_total']}x) | - |"
        )
    r = results.get("rollback")
    if r:
        lines.append(
            f"| rollback: failure -> verified database in place | {r['pipeline_rollback_seconds']} s "
            f"(verify {r['pipeline_verify_seconds']} s, swap {r['pipeline_swap_seconds']} s) | "
            f"pg_restore -j{r['pg_restore_jobs']} {r['plain_pg_restore_seconds']} s | {r['ratio']}x | "
            f"<= {r['goal']}x {'met' if r['met'] else 'NOT met'} |"
        )
        lines.append(
            f"| rollback without a clone (fallback: pg_restore + verify + swap) | "
            f"{r['fallback_pg_restore_rollback_seconds']} s | pg_restore -j{r['pg_restore_jobs']} "
            f"{r['plain_pg_restore_seconds']} s | {r['fallback_ratio']}x | - |"
        )
    w = results.get("window")
    if w:
        lines.append(
            f"| maintenance window: application without CONNECT (migrate.yml, offline mode) | "
            f"{w.get('frozen_seconds', w['pipeline_playbook_seconds'])} s (whole run "
            f"{w['pipeline_playbook_seconds']} s, {w.get('ratio_whole_run', w['ratio'])}x) | "
            f"alembic upgrade head {w['bare_alembic_seconds']} s | {w['ratio']}x | "
            f"<= {w['goal']}x {'met' if w['met'] else 'NOT met'} |"
        )
    o = results.get("overhead")
    if o:
        lines.append(
            f"| orchestration overhead, empty database | {o['pipeline_playbook_seconds']} s | "
            f"pg_dump + alembic {o['bare_seconds']} s | {o['ratio']}x (+{o['overhead_seconds']} s) | - |"
        )
    on = results.get("online")
    if on:
        p, n = on["pipeline"], on["naive"]
        lines.append(
            f"| online mode: worst writer stall through the chain "
            f"(pgbench, {on['writer']['clients']} clients, "
            f"{on['writer']['rate_tps']} tps) | worst {p.get('worst_ms')} ms, p99 {p.get('p99_ms')} ms "
            f"(chain {p['chain_seconds']} s, batches of {p.get('batch_size')}, "
            f"{p.get('transactions')} transactions) | naive statements: worst "
            f"{n.get('worst_ms')} ms, p99 {n.get('p99_ms')} ms (chain {n['chain_seconds']} s) | "
            f"{ratio(p.get('worst_ms', 0), n.get('worst_ms', 0))}x | <= {on['goal_worst_ms']} ms "
            f"{'met' if on['met'] else 'NOT met'} |"
        )
    return "\n".join(lines) + "\n"


def lab(state: str, scale: str, inventory: Path) -> float:
    argv = [
        "ansible-playbook",
        "-i",
        str(inventory),
        str(ROOT / "playbooks" / "lab.yml"),
        "-e",
        f"lab_state={state}",
    ]
    if state == "present":
        argv += ["-e", f"lab_scale={scale}"]
    env = {
        key: value
        for key, value in ansible_env(Path(tempfile.gettempdir())).items()
        if key != "ANSIBLE_LOCAL_TEMP"
    }
    seconds, _ = timed(lambda: run(argv, env=env))
    return seconds


PARTS = ("backup", "rollback", "online", "window", "overhead")


def run_bench(
    target: Target, work: Path, parts: tuple[str, ...] = PARTS, online_batch_size: int | None = None
) -> dict:
    """Measure the figures in order (rollback needs backup's manifest; online needs the data at 0001, and
    the window run takes it to head)."""
    clock = time.monotonic()
    results: dict = {"machine": machine(), "database": database_facts(target)}
    if "backup" in parts:
        results["backup"] = measure_backup(target, work)
        if "rollback" in parts:
            results["rollback"] = measure_rollback(target, work, results["backup"]["manifest_path"])
    if "online" in parts:  # before the window run, which migrates the database itself
        results["online"] = measure_online(target, work, batch_size=online_batch_size)
    if "window" in parts:
        results["window"] = measure_window(target, work)
    if "overhead" in parts:
        results["overhead"] = measure_overhead(target, work)
    results["total_seconds"] = round(time.monotonic() - clock, 1)
    results["finished_at"] = backup.iso(backup.utc_now())
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="large", help="lab_scale of the bench cluster (default large)")
    parser.add_argument("--keep-lab", action="store_true", help="leave the bench cluster running")
    parser.add_argument("--no-lab", action="store_true", help="use the running bench cluster as it is")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--online-batch-size",
        type=int,
        default=None,
        help="backfill batch size for the online part (default: db_migrate_batch_size), to compare sizes",
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    wall = time.monotonic()
    parts = tuple(p for p in args.parts.split(",") if p)
    target = load_target()
    work = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    os.chmod(work, 0o700)
    try:
        print(f"bench: lab at scale {args.scale} on port {target.ci.port} ...", flush=True)
        lab_seconds = 0.0 if args.no_lab else lab("present", args.scale, target.inventory)
        print(f"bench: lab ready in {lab_seconds} s; measuring {', '.join(parts)} ...", flush=True)
        results = run_bench(target, work, parts, online_batch_size=args.online_batch_size)
        results["lab_seconds"] = lab_seconds
        results["scale"] = args.scale
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not (args.keep_lab or args.no_lab):
            lab("absent", args.scale, target.inventory)
    results["wall_seconds"] = round(
        time.monotonic() - wall, 1
    )  # make bench end to end: lab, figures, teardown
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
