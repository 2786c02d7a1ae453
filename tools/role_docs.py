"""Keep the READMEs' variable tables in step with meta/argument_specs.yml (the single source).

    python tools/role_docs.py          # rewrite the tables
    python tools/role_docs.py --check  # exit 1 and name the stale files (a test runs this)

Each role README's "## Role Variables" section is generated from that role's argument spec; the top README
gets every user-facing role's own variables plus one table of the shared connection variables, between the
markers ``<!-- role-vars:begin -->`` and ``<!-- role-vars:end -->``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Roles an operator configures, in pipeline order; db_job_wait is plumbing and documents itself only.
USER_ROLES = (
    "db_preflight",
    "db_history",
    "db_gate",
    "db_window",
    "db_lint",
    "db_freeze",
    "db_backup",
    "db_migrate",
    "db_smoke",
    "db_restore",
    "db_report",
    "schedule",
    "lab",
)
BEGIN, END = "<!-- role-vars:begin -->", "<!-- role-vars:end -->"


def load_spec(role: str) -> dict:
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return spec["argument_specs"]["main"].get("options", {})


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


def own(role: str, options: dict) -> dict:
    return {k: v for k, v in options.items() if k.startswith(role + "_")}


def shared(options_by_role: dict[str, dict]) -> dict:
    result: dict = {}
    for role, options in options_by_role.items():
        for name, opt in options.items():
            if name not in own(role, options) and name not in result:
                result[name] = opt
    return result


def role_section(role: str) -> str:
    options = load_spec(role)
    shared_names = [k for k in options if k not in own(role, options)]
    text = table(own(role, options))
    if shared_names:
        text += (
            "\n\nShared connection variables it uses (see the top README): "
            + ", ".join(f"`{n}`" for n in shared_names)
            + "."
        )
    return text


def top_section() -> str:
    by_role = {role: load_spec(role) for role in USER_ROLES}
    parts = ["### Connection variables (inventory, shared by every role)", "", table(shared(by_role))]
    for role in USER_ROLES:
        parts += ["", f"### `{role}`", "", table(own(role, by_role[role]))]
    return "\n".join(parts)


def replace_role_readme(text: str, section: str) -> str:
    pattern = re.compile(r"(## Role Variables\n\n).*?(\n## )", re.S)
    if not pattern.search(text):
        raise SystemExit("a role README has no '## Role Variables' section followed by another section")
    return pattern.sub(lambda m: m.group(1) + section + "\n" + m.group(2), text, count=1)


def replace_markers(text: str, section: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{section}\n{END}{tail}"


def expected_files() -> dict[Path, str]:
    files = {}
    for spec in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role = spec.parent.parent.name
        readme = spec.parent.parent / "README.md"
        files[readme] = replace_role_readme(readme.read_text(), role_section(role))
    top = ROOT / "README.md"
    files[top] = replace_markers(top.read_text(), top_section())
    return files


def main(argv: list[str]) -> int:
    stale = [p for p, text in expected_files().items() if p.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"stale variable table: {path.relative_to(ROOT)} (run: python tools/role_docs.py)")
        return 1 if stale else 0
    for path, text in expected_files().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
