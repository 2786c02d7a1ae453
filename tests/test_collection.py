"""The collection as a user gets it: built, installed, and run from a project of their own.

`ansible-galaxy collection build` makes the artifact, `ansible-galaxy collection install` puts it in a
temporary collections path, and `ansible-playbook pgmigrate.pipeline.migrate` runs from a directory outside
the checkout, with the user's own ansible.cfg, inventory and Alembic project (a copy of the demo chain plus
a revision that commits work and fails), against a throwaway cluster. Nothing of the checkout is on the
paths Ansible searches: if the artifact lacked a module, a role or a module_util, the run would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_run import ROOT, write_private
from pgcluster import APP, APP_PASSWORD, MIGRATOR, MIGRATOR_PASSWORD, PgCluster
from test_pipeline import fingerprint, revision

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built artifact installed into a collections path of its own; returns that path."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", dist, ROOT],
        check=True,
        capture_output=True,
    )
    (tarball,) = dist.glob("pgmigrate-pipeline-*.tar.gz")
    collections = tmp_path_factory.mktemp("collections")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--force", "-p", collections, tarball],
        check=True,
        capture_output=True,
    )
    return collections


def test_the_artifact_ships_the_collection_and_nothing_of_the_lab_or_the_tests(installed: Path):
    root = installed / "ansible_collections" / "pgmigrate" / "pipeline"
    shipped = {str(p.relative_to(root)) for p in root.rglob("*")}
    for needed in (
        "meta/runtime.yml",
        "playbooks/migrate.yml",
        "playbooks/restore.yml",
        "playbooks/release.yml",
        "plugins/modules/alembic_upgrade.py",
        "plugins/module_utils/pgconn.py",
        "plugins/callback/progress.py",
        "roles/db_preflight/meta/argument_specs.yml",
        "roles/db_report/tasks/main.yml",
    ):
        assert needed in shipped, needed
    for absent in (
        "tests",
        "molecule",
        "migrations",
        "alembic.ini",
        "inventories",
        "roles/lab",
        "bench",
        "ansible.cfg",
    ):
        assert absent not in shipped, absent
    assert not any(part.startswith(".") for path in shipped for part in Path(path).parts)
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["namespace"] == "pgmigrate"
    assert manifest["collection_info"]["dependencies"] == {}


def user_project(base: Path, collections: Path, pg: PgCluster, dbname: str) -> Path:
    """A team's repository: their Alembic project, inventory and ansible.cfg; nothing of this checkout."""
    project = base / "team-repo"
    shutil.copytree(
        ROOT / "migrations", project / "db" / "migrations", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "alembic.ini", project / "db" / "alembic.ini")
    shutil.copy(
        ROOT / "tests" / "fixtures" / "0006_fails_after_committed_work.py",
        project / "db" / "migrations" / "versions" / "0006_fails_after_committed_work.py",
    )
    (project / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {collections}\n"
        "stdout_callback = pgmigrate.pipeline.progress\n"
        "callback_result_format = json\n"
    )
    inventory = project / "inventories" / "staging"
    (inventory / "group_vars" / "staging").mkdir(parents=True)
    hosts = {
        "staging": {
            "hosts": {"app-db": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    group_vars = {
        "db_environment": "staging",
        "db_host": "127.0.0.1",
        "db_port": pg.port,
        "db_name": dbname,
        "db_migration_user": MIGRATOR,
        "db_app_user": APP,
        "db_alembic_config": str(project / "db" / "alembic.ini"),
        "db_backup_dir": str(base / "backups"),
        "db_report_dir": str(base / "reports"),
        "db_migrate_batch_size": 100,
    }
    (inventory / "group_vars" / "staging" / "vars.yml").write_text(yaml.safe_dump(group_vars))
    write_private(
        inventory / "group_vars" / "staging" / "vault.yml",
        {"db_migration_password": MIGRATOR_PASSWORD, "db_app_password": APP_PASSWORD},
    )
    return project


def run_installed(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": os.environ["HOME"],
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
    }
    cmd = [str(BIN / "ansible-playbook"), "-i", "inventories/staging", "pgmigrate.pipeline.migrate", *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_collection_migrates_a_users_project_and_restores_a_failing_revision(
    pg: PgCluster, seeded_db: str, tmp_path: Path, installed: Path
):
    project = user_project(tmp_path, installed, pg, seeded_db)
    assert ROOT not in project.parents

    proc = run_installed(project, "-e", "db_migrate_target=0005")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert revision(pg, seeded_db) == "0005"
    # The roles ran from the installed artifact, not from this checkout.
    assert (
        str(ROOT) not in proc.stdout and str(installed) in run_installed(project, "--list-tasks", "-v").stdout
    )

    before = fingerprint(pg, seeded_db)
    proc = run_installed(project)
    assert proc.returncode != 0
    assert "0006 failed after committing its batches" in proc.stdout
    assert revision(pg, seeded_db) == "0005"
    assert fingerprint(pg, seeded_db) == before
    outcomes = {json.loads(p.read_text())["outcome"] for p in (tmp_path / "reports").glob("*.json")}
    assert outcomes == {"succeeded", "failed-and-restored"}
    assert MIGRATOR_PASSWORD not in proc.stdout + proc.stderr
