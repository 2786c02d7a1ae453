"""ansible-test sanity on the built collection: the artifact users install, not the checkout.

    python tools/sanity.py [--test NAME ...]      (make sanity; make test runs it)

Builds pgmigrate.pipeline with ansible-galaxy, installs the tarball into a temporary directory, adds
tests/sanity's ignore file (the tests and their fixtures do not ship, so it is copied in) and runs the
sanity tests that apply to a collection outside the ansible package, on the runner's Python only: the
collection's modules run on the controller (every inventory host is a database reached over TCP).

ansible-test makes a virtual environment per test and bootstraps pip in it with a script it downloads from
ci-files.testing.ansible.com, which this machine cannot reach. Its error names the escape ("can be manually
downloaded and saved to ~/.ansible/test/cache/"): a stand-in saved there bootstraps pip with ensurepip and
installs the pinned pip version from PyPI. HOME points into .cache/sanity, so the user's home is untouched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "sanity"
BIN = Path(sys.executable).parent

# The sanity tests run, and why the others are not.
TESTS = (
    "action-plugin-docs",
    "ansible-doc",
    "compile",
    "empty-init",
    "ignores",
    "import",
    "line-endings",
    "no-assert",
    "no-get-exception",
    "no-illegal-filenames",
    "no-smart-quotes",
    "pep8",
    "pylint",
    "replace-urlopen",
    "runtime-metadata",
    "shebang",
    "symlinks",
    "use-argspec-type-path",
    "use-compat-six",
    "validate-modules",
    "yamllint",
)
SKIPPED = {
    "changelog": "the collection keeps CHANGELOG.md by hand, not antsibull-changelog fragments",
    "integration-aliases": "no ansible-test integration targets (the tests are Molecule and pytest)",
    "pslint": "no PowerShell",
    "shellcheck": "no shell scripts ship",
}

GET_PIP_STAND_IN = '''"""Stands in for ansible-test's get-pip bootstrap script (tools/sanity.py says why)."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
wanted = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
subprocess.check_call(pip + wanted)
'''


def pip_version() -> str:
    """The pip version ansible-test bootstraps in its virtual environments."""
    from ansible_test._internal.python_requirements import get_venv_packages

    return get_venv_packages(SimpleNamespace(version=f"{sys.version_info[0]}.{sys.version_info[1]}"))["pip"]


def run(*argv: str, cwd: Path = ROOT, env: dict | None = None) -> None:
    subprocess.run(argv, cwd=cwd, env=env, check=True)


def install_collection(where: Path) -> Path:
    """Build the artifact and install it where ansible-test wants it: .../ansible_collections/<ns>/<name>.

    Outside the checkout: inside a git work tree ansible-test tests only the files git tracks there (none).
    """
    run(str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(where), ".")
    (tarball,) = sorted(where.glob("pgmigrate-pipeline-*.tar.gz"))
    # --force: the checkout is already on the configured collections path (make venv links it there).
    run(str(BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(where), str(tarball))
    installed = where / "ansible_collections" / "pgmigrate" / "pipeline"
    shutil.copytree(ROOT / "tests" / "sanity", installed / "tests" / "sanity")
    return installed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="append", choices=TESTS, help="run only this test (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgmigrate-sanity-") as where:
        return sanity(install_collection(Path(where)), args.test or TESTS)


def sanity(installed: Path, names: tuple[str, ...] | list[str]) -> int:
    home = WORK / "home"
    stand_in = home / ".ansible" / "test" / "cache" / f"get_pip_{pip_version().replace('.', '_')}.py"
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    stand_in.write_text(GET_PIP_STAND_IN)
    env = {**os.environ, "HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    tests = [arg for name in names for arg in ("--test", name)]
    print(
        f"ansible-test sanity on the built collection ({installed}); skipped: "
        + "; ".join(f"{name} ({why})" for name, why in SKIPPED.items())
    )
    argv = [str(BIN / "ansible-test"), "sanity", "--python", python, "--color", "no", *tests]
    return subprocess.run(argv, cwd=installed, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
