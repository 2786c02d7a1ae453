"""The docs stay true: variable tables match the argument specs, and every role is documented."""

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
