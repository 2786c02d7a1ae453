"""The db_migrate role through ansible-playbook: check mode, a real run, idempotence, a failing revision."""

from __future__ import annotations

import importlib
import importlib.util
import json
import stat
import sys
from pathlib import Path

import pytest
import yaml
from pgcluster import MIGRATOR_PASSWORD, PgCluster
from test_alembic_runner import db_state, make_project, write_revision
from test_preflight import failure_lines, host_vars, run_playbook


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def migrate(pg: PgCluster, dbname: str, project: Path, tmp_path: Path, *args: str, **extra) -> tuple:
    result_file = tmp_path / "result.json"
    result_file.unlink(missing_ok=True)
    variables = {"db_migrate_alembic_config": str(project), "result_file": str(result_file), **extra}
    proc = run_playbook("migrate.yml", {"db1": host_vars(pg, dbname)}, variables, tmp_path, *args)
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
    return proc, json.loads(result_file.read_text())


def upgrade_task_status(proc) -> str:
    """'changed' or 'ok': how the role reported its step (the result file's copy aside)."""
    after = proc.stdout.split(
        "Hand the migration forward as db_migrate_result, also when it failed part-way.", 1
    )[1]
    return next(line.split(":")[0] for line in after.splitlines() if line.startswith(("ok:", "changed:")))


def test_check_mode_then_run_then_nothing_to_do(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    progress = tmp_path / "progress.log"

    proc, result = migrate(pg, dbname, project, tmp_path, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["pending"] == ["0001", "0002", "0003"] and result["applied"] == []
    assert "CREATE TABLE users" in result["sql"] and "would apply 0001, 0002, 0003 to" in proc.stdout
    assert db_state(pg, dbname) == {"relations": [], "version": None}

    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_progress_file=str(progress))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [a["revision"] for a in result["applied"]] == ["0001", "0002", "0003"]
    assert (result["revision_before"], result["revision_after"]) == ("base", "0003")
    assert result["row_count_changes"] == {"users": "0002: duplicates removed"}
    assert upgrade_task_status(proc) == "changed"
    assert "backfill batch 1/2 done" in progress.read_text()
    assert stat.S_IMODE(progress.stat().st_mode) == 0o600
    assert db_state(pg, dbname)["version"] == ["0003"]

    proc, result = migrate(pg, dbname, project, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert upgrade_task_status(proc) == "ok" and result["applied"] == []
    assert "already at the target, nothing applied" in proc.stdout


def test_failing_revision_fails_the_role_in_one_line(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    write_revision(
        project.parent,
        "0004",
        "0003",
        "op.execute('CREATE TABLE half_done (id int)')\nop.execute('SELECT 1 / 0')",
    )
    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_target="0004")
    assert proc.returncode != 0
    [line] = failure_lines(proc)
    assert line.startswith(f"migration of {dbname} failed: revision 0004 failed after ")
    assert line.endswith(
        ": psycopg2.errors.DivisionByZero: division by zero "
        "(applied before it: 0001, 0002, 0003; database is now at 0003)"
    )
    assert result["failed_revision"] == "0004" and result["revision_after"] == "0003"
    assert [a["revision"] for a in result["applied"]] == ["0001", "0002", "0003"]
    assert "half_done" not in db_state(pg, dbname)["relations"]


def test_refused_plan_fails_before_running_anything(
    pg: PgCluster, dbname: str, project: Path, tmp_path: Path
) -> None:
    proc, result = migrate(pg, dbname, project, tmp_path, db_migrate_target="0009")
    assert proc.returncode != 0
    [line] = failure_lines(proc)
    assert line.startswith(f"migration of {dbname} failed: target revision '0009' is not in the chain at ")
    assert result["applied"] == [] and result["error"].startswith("target revision '0009'")
    assert db_state(pg, dbname) == {"relations": [], "version": None}


LIBRARY = Path(__file__).resolve().parent.parent / "library"
FRAGMENTS = Path(__file__).resolve().parent.parent / "doc_fragments"


def documented_options(doc: dict) -> dict:
    """The module's own options plus those of the doc fragments it extends (as ansible-doc merges them)."""
    options = dict(doc.get("options") or {})
    for fragment in doc.get("extends_documentation_fragment") or []:
        spec = importlib.util.spec_from_file_location(f"fragment_{fragment}", FRAGMENTS / f"{fragment}.py")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        options.update(yaml.safe_load(loaded.ModuleDocFragment.DOCUMENTATION)["options"])
    return options


@pytest.mark.parametrize("name", sorted(p.stem for p in LIBRARY.glob("*.py")))
def test_module_documentation_matches_its_argument_spec(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-doc must parse each module's docs, and every option documented is one it accepts."""
    for source in (LIBRARY.parent / "module_utils").glob("*.py"):
        mod = importlib.import_module(f"module_utils.{source.stem}")
        monkeypatch.setitem(sys.modules, f"ansible.module_utils.{source.stem}", mod)
    captured: dict = {}

    class CapturedSpecError(Exception):
        """Stops main() right after it declared its argument_spec."""

    def fake_module(argument_spec: dict, **_kw):
        captured.update(argument_spec)
        raise CapturedSpecError

    path = LIBRARY / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"library_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "AnsibleModule", fake_module)
    with pytest.raises(CapturedSpecError):
        module.main()
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == name
    options = documented_options(doc)
    assert set(options) == set(captured)
    for option, spec_ in captured.items():
        assert options[option].get("default", spec_.get("default")) == spec_.get("default"), option
        assert options[option]["type"] == spec_.get("type", "str"), option
    assert yaml.safe_load(module.EXAMPLES) and yaml.safe_load(module.RETURN)
