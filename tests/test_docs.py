"""The docs stay true: variable tables match the argument specs, and every role is documented."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_generated_docs_match_their_sources():
    """Role variable tables (argument specs), the shared variables, the benchmark figures (results.json)."""
    proc = subprocess.run(
        [sys.executable, "tools/docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_every_role_has_a_readme_defaults_and_an_argument_spec():
    for role in (ROOT / "roles").iterdir():
        for part in ("README.md", "meta/argument_specs.yml", "meta/main.yml", "tasks/main.yml"):
            assert (role / part).is_file(), f"{role.name} lacks {part}"


def test_every_module_documents_itself_as_ansible_doc_reads_it():
    """DOCUMENTATION is YAML in a string: a stray colon breaks it silently until someone runs ansible-doc."""
    modules = sorted(f"pgmigrate.pipeline.{p.stem}" for p in (ROOT / "plugins" / "modules").glob("*.py"))
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    proc = subprocess.run(
        [str(ansible_doc), "-t", "module", "--json", *modules], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    docs = json.loads(proc.stdout)
    assert sorted(docs) == modules
    for name, doc in docs.items():
        options = doc["doc"].get("options", {})
        if "login_db" in options:  # the shared connection options come from plugins/doc_fragments/pgconn.py
            assert {"login_host", "login_port", "connect_timeout"} <= set(options), name


def test_every_tasks_from_entry_point_has_its_own_argument_spec():
    """A role's entry point validates its input: each tasks_from used anywhere has an argument_specs entry."""
    used: set[tuple[str, str]] = set()
    for path in [
        *ROOT.glob("playbooks/*.yml"),
        *ROOT.glob("roles/*/tasks/*.yml"),
        *ROOT.glob("molecule/*/*.yml"),
    ]:
        text = path.read_text()
        for match in re.finditer(r"name: (?:pgmigrate\.pipeline\.)?(\w+)\n\s+tasks_from: (\w+)", text):
            used.add(match.groups())
    assert used, "no tasks_from found: the pattern is stale"
    for role, entry in sorted(used):
        specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
        assert entry in specs["argument_specs"], f"{role} has no argument_specs entry for tasks_from {entry}"
        assert (ROOT / "roles" / role / "tasks" / f"{entry}.yml").is_file()


def test_module_utils_import_each_other_without_a_cycle():
    utils = ROOT / "plugins" / "module_utils"
    prefix = "ansible_collections.pgmigrate.pipeline.plugins.module_utils"
    graph: dict[str, set[str]] = {}
    for path in utils.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
                rest = node.module[len(prefix) :].lstrip(".")
                found |= {rest} if rest else {alias.name for alias in node.names}
        graph[path.stem] = found
    assert graph["alembic_runner"] >= {"pgconn", "checksums", "progress"}  # the parse sees the imports

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, "import cycle: " + " -> ".join((*stack, name))
        for dep in graph.get(name, ()):
            visit(dep, (*stack, name))

    for name in graph:
        visit(name, ())
