"""Keep the generated parts of the docs in step with their single sources.

    python tools/docs.py          # rewrite them
    python tools/docs.py --check  # exit 1 and name the stale files (a test runs this)

* Each role README's "## Role Variables" section is generated from that role's meta/argument_specs.yml,
  one table per entry point (main, then each tasks_from entry point).
* The shared variables (db_*, set once per inventory and used by several roles) get one table in
  docs/DESIGN.md, between ``<!-- shared-vars:begin -->`` and ``<!-- shared-vars:end -->``.
* The benchmark's figures are rendered from bench/results.json (what `make bench` wrote) into
  docs/benchmark.md, between ``<!-- bench-results:begin -->`` and ``<!-- bench-results:end -->``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The roles, in pipeline order.
USER_ROLES = (
    "db_preflight",
    "db_freeze",
    "db_backup",
    "db_migrate",
    "db_smoke",
    "db_restore",
    "db_report",
    "schedule",
    "lab",
)
DESIGN = ROOT / "docs" / "DESIGN.md"
BENCHMARK = ROOT / "docs" / "benchmark.md"
RESULTS = ROOT / "bench" / "results.json"


def load_specs(role: str) -> dict:
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return spec["argument_specs"]


def fmt_default(opt: dict) -> str:
    if opt.get("required"):
        return "(required)"
    if "default" not in opt:
        return ""
    value = opt["default"]
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`" if text != "" else '`""`'


def describe(opt: dict) -> str:
    desc = opt.get("description", "")
    text = " ".join(desc) if isinstance(desc, list) else str(desc)
    text = re.sub(r"[CIOV]\(([^)]*)\)", r"`\1`", text)
    if opt.get("choices"):
        text += " One of: " + ", ".join(f"`{c}`" for c in opt["choices"] if c != "") + "."
    return text.replace("|", "\\|").replace("\n", " ")


def table(options: dict) -> str:
    rows = ["| variable | default | description |", "| --- | --- | --- |"]
    rows += [f"| `{name}` | {fmt_default(opt)} | {describe(opt)} |" for name, opt in options.items()]
    return "\n".join(rows)


def is_shared(name: str, role: str) -> bool:
    """A variable the inventory sets once for every role (db_*, not this role's own prefix)."""
    return name.startswith("db_") and not name.startswith(role + "_")


def role_section(role: str) -> str:
    parts = []
    for entry, spec in load_specs(role).items():
        options = spec.get("options", {})
        own = {k: v for k, v in options.items() if not is_shared(k, role)}
        shared = [k for k in options if is_shared(k, role)]
        title = "the role" if entry == "main" else f"`tasks_from: {entry}`"
        parts += [f"### {title}: {spec.get('short_description', '').rstrip('.')}", ""]
        parts.append(table(own) if own else "No variables of its own.")
        if shared:
            names = ", ".join(f"`{n}`" for n in shared)
            parts += ["", f'Shared variables it uses (docs/DESIGN.md, "Shared variables"): {names}.']
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def shared_section() -> str:
    found: dict = {}
    for role in USER_ROLES:
        for spec in load_specs(role).values():
            for name, opt in spec.get("options", {}).items():
                if is_shared(name, role) and name not in found:
                    found[name] = opt
    return table(dict(sorted(found.items())))


def replace_role_readme(text: str, section: str) -> str:
    pattern = re.compile(r"(## Role Variables\n\n).*?(\n## )", re.S)
    if not pattern.search(text):
        raise SystemExit("a role README has no '## Role Variables' section followed by another section")
    return pattern.sub(lambda m: m.group(1) + section + m.group(2), text, count=1)


def replace_markers(path: Path, name: str, section: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path.relative_to(ROOT)} lacks the {begin} / {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{section}\n{end}{tail}"


def bench_section() -> str:
    """The results table as bench/run.py renders it, from the results the last `make bench` wrote."""
    sys.path.insert(0, str(ROOT / "bench"))
    import run as bench  # bench/run.py: the one place that knows how its figures read

    return bench.markdown(json.loads(RESULTS.read_text())).strip()


def expected_files() -> dict[Path, str]:
    files = {}
    for role in USER_ROLES:
        readme = ROOT / "roles" / role / "README.md"
        files[readme] = replace_role_readme(readme.read_text(), role_section(role))
    files[DESIGN] = replace_markers(DESIGN, "shared-vars", shared_section())
    files[BENCHMARK] = replace_markers(BENCHMARK, "bench-results", bench_section())
    return files


def main(argv: list[str]) -> int:
    roles = {p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml")}
    if roles != set(USER_ROLES):
        print(f"roles and USER_ROLES differ: {sorted(roles ^ set(USER_ROLES))}")
        return 1
    stale = [p for p, text in expected_files().items() if p.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"stale variable table: {path.relative_to(ROOT)} (run: python tools/docs.py)")
        return 1 if stale else 0
    for path, text in expected_files().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
