"""The docs stay true: variable tables match the argument specs, and every role is documented."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_variable_tables_match_the_argument_specs():
    proc = subprocess.run(
        [sys.executable, "tools/role_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_every_role_has_a_readme_defaults_and_an_argument_spec():
    for role in (ROOT / "roles").iterdir():
        for part in ("README.md", "meta/argument_specs.yml", "meta/main.yml", "tasks/main.yml"):
            assert (role / part).is_file(), f"{role.name} lacks {part}"


def test_every_module_documents_itself_as_ansible_doc_reads_it():
    """DOCUMENTATION is YAML in a string: a stray colon breaks it silently until someone runs ansible-doc."""
    modules = sorted(p.stem for p in (ROOT / "library").glob("*.py"))
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    proc = subprocess.run(
        [str(ansible_doc), "-t", "module", "--json", *modules], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "ERROR" not in proc.stderr, proc.stderr
    docs = json.loads(proc.stdout)
    assert sorted(docs) == modules
    for name, doc in docs.items():
        options = doc["doc"].get("options", {})
        if "login_db" in options:  # the shared connection options come from doc_fragments/pgconn.py
            assert {"login_host", "login_port", "connect_timeout"} <= set(options), name
