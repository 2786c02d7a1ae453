"""Security checks that need no pipeline run: where secrets live, what the roles may do, how SQL is built.

The fault suite (tests/test_faults.py) proves the run-time half: no password in any process's argv, in
ansible output at default and -v verbosity, in reports, progress files, manifests or archives; backups
private; restore refusing an archive others can write.
"""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import yaml
from pgcluster import APP, APP_PASSWORD, MIGRATOR, PgCluster

ROOT = Path(__file__).resolve().parent.parent
REAL_INVENTORIES = ("staging", "production")


@pytest.mark.parametrize("environment", REAL_INVENTORIES)
def test_real_inventories_take_passwords_only_from_vault_variables(environment: str):
    group_vars = ROOT / "inventories" / environment / "group_vars" / environment
    settings = yaml.safe_load((group_vars / "vars.yml").read_text())
    passwords = {k: v for k, v in settings.items() if "password" in k}
    assert passwords, "no password variables found"
    for name, value in passwords.items():
        assert value == "{{ vault_" + name + " }}", f"{name} must come from vault_{name}, not {value!r}"
    vault = group_vars / "vault.yml"
    if vault.exists():  # a filled-in vault on this machine must be encrypted
        assert vault.read_text().startswith("$ANSIBLE_VAULT;"), f"{vault} is not vault-encrypted"
    example = yaml.safe_load((group_vars / "vault.yml.example").read_text())
    assert set(example) == {f"vault_{name}" for name in passwords}
    assert set(example.values()) == {"CHANGE-ME"}
    assert "ansible-vault encrypt" in (group_vars / "vault.yml.example").read_text()


def test_readme_shows_how_to_encrypt_the_vault():
    assert "ansible-vault encrypt" in (ROOT / "README.md").read_text()


def test_lab_creates_neither_role_as_superuser():
    tasks = yaml.safe_load((ROOT / "roles" / "lab" / "tasks" / "roles.yml").read_text())
    flags = {
        t["community.postgresql.postgresql_user"]["name"]: t["community.postgresql.postgresql_user"][
            "role_attr_flags"
        ].split(",")
        for t in tasks
        if "community.postgresql.postgresql_user" in t
    }
    assert {"NOSUPERUSER", "NOCREATEROLE", "NOBYPASSRLS"} <= set(flags["{{ db_migration_user }}"])
    assert {"NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOBYPASSRLS"} <= set(flags["{{ db_app_user }}"])


def test_the_migration_role_is_no_superuser(pg: PgCluster):
    with contextlib.closing(pg.superuser_conn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname IN (%s, %s)", (MIGRATOR, APP)
        )
        assert {r[0]: (r[1], r[2]) for r in cur.fetchall()} == {MIGRATOR: (False, False), APP: (False, False)}


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE meetings ADD COLUMN sneaky int",
        "DROP TABLE users",
        "CREATE TABLE public.sneaky (id int)",
        "CREATE SCHEMA sneaky",
        "TRUNCATE users",
        # env.py seals the version table after every run, whatever the default privileges grant.
        "UPDATE alembic_version SET version_num = '0005'",
        "DELETE FROM alembic_version",
    ],
)
def test_the_application_role_cannot_change_the_schema_or_the_revision(
    pg: PgCluster, seeded_db: str, statement: str
):
    with (
        contextlib.closing(pg.connect(seeded_db, user=APP, password=APP_PASSWORD)) as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.InsufficientPrivilege),
    ):
        cur.execute(statement)


# Interpolations that hold only code constants (the history table's column lists), never inventory values.
REVIEWED = {
    ("plugins/module_utils/history.py", "', '.join(columns)"),
    ("plugins/module_utils/history.py", "', '.join(['%s'] * len(columns))"),
    ("plugins/module_utils/history.py", "updates"),
}


def _execute_calls_with_interpolated_sql(path: Path) -> list[str]:
    """`execute(f"...{x}...")` where x is not an ALL-CAPS module constant: a value pasted into SQL."""
    rel = str(path.relative_to(ROOT))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "execute" and node.args):
            continue
        query = node.args[0]
        if isinstance(query, ast.JoinedStr):
            for part in query.values:
                if not isinstance(part, ast.FormattedValue):
                    continue
                expression = ast.unparse(part.value)
                if not expression.isupper() and (rel, expression) not in REVIEWED:
                    found.append(f"{rel}:{node.lineno}: {{{expression}}}")
        elif isinstance(query, ast.BinOp) and isinstance(query.op, ast.Mod):
            found.append(f"{rel}:{node.lineno}: % formatting")
    return found


def test_module_code_never_pastes_a_value_into_sql():
    """Inventory values reach SQL only as parameters or psycopg2.sql identifiers/literals."""
    files = sorted((ROOT / "plugins").rglob("*.py"))
    offenders = [hit for path in files for hit in _execute_calls_with_interpolated_sql(path)]
    assert offenders == []


def test_no_task_runs_a_shell_string():
    """Every external command runs with an argv (modules or ansible.builtin.command), never via a shell."""
    offenders = []
    for path in [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("playbooks/*.yml")]:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip().startswith(("ansible.builtin.shell:", "shell:", "ansible.builtin.raw:")):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}")
    assert offenders == []


# Templates whose output a shell (cron's /bin/sh) or systemd's own command-line parser reads, and the lines of
# each that are command lines. Interpolations there that are not numbers or weekday names the role computes
# itself must go through the quote filter (tests/test_schedule.py runs them with hostile values).
SHELL_TEMPLATES = {"roles/schedule/templates/cron_job.j2": "", "roles/schedule/templates/service.j2": "Exec"}
COMPUTED = {"__schedule_hour", "__schedule_minute", "__schedule_days"}


def test_templates_that_produce_shell_quote_every_value():
    offenders = []
    for rel, prefix in SHELL_TEMPLATES.items():
        for lineno, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
            if not line.startswith(prefix) and not line.startswith("Environment="):
                continue
            for expression in re.findall(r"{{(.*?)}}", line):
                names = set(re.findall(r"\b[a-z_]\w*\b", expression.split("|", 1)[0]))
                if names <= COMPUTED:
                    continue
                if "| quote" not in expression and "map('quote')" not in expression:
                    offenders.append(f"{rel}:{lineno}: {{{{{expression}}}}}")
    assert offenders == []
