"""The linter gate: render the pending revisions' SQL offline and run squawk on each revision's SQL.

Approval lives in the revision file, per statement, with a reason: a ``-- squawk-ignore <rules> -- <reason>``
line right above the statement (``migrations.safe_ops.squawk_ignore`` writes it). squawk itself honours
the ignore; the gate adds that an ignore without a reason is not an approval. A revision that cannot be
rendered offline cannot be linted, which is a violation too: the gate never passes what it did not read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

from ansible_collections.pgmigrate.pipeline.plugins.module_utils import alembic_runner, pgconn

# Alembic's own bookkeeping table, emitted (not by a revision) when rendering from base: nobody can
# annotate it, and it is created empty, so it blocks nothing.
ALEMBIC_VERSION_DDL = re.compile(r"CREATE TABLE alembic_version \(.*?\);\n", re.S)
_IGNORE = re.compile(r"^\s*--\s*squawk-ignore\s+(?P<rules>[\w,-]+)(?:\s+--\s*(?P<reason>.*\S))?\s*$")


class LintError(Exception):
    """The gate could not run (no squawk, unreadable chain), in one line."""


def statement_at(lines: list[str], index: int, width: int = 160) -> str:
    """The statement starting at 0-based line `index`, on one line, shortened for messages."""
    parts: list[str] = []
    for line in lines[index:]:
        parts.append(line.strip())
        if line.rstrip().endswith(";"):
            break
    text = " ".join(p for p in parts if p)
    return text if len(text) <= width else text[: width - 3] + "..."


def approvals(sql: str) -> tuple[list[dict], list[dict]]:
    """Ignore comments with a reason (approvals) and without one (violations, at their line)."""
    approved, unreasoned = [], []
    lines = sql.splitlines()
    for n, line in enumerate(lines):
        m = _IGNORE.match(line)
        if not m:
            continue
        if m.group("reason"):
            approved.append({"rules": m.group("rules"), "reason": m.group("reason")})
        else:
            unreasoned.append(
                {
                    "rule": "approval-without-reason",
                    "statement": statement_at(lines, n + 1),
                    "message": f"'-- squawk-ignore {m.group('rules')}' needs a reason: '-- <why it is safe>'",
                }
            )
    return approved, unreasoned


def run_squawk(squawk: str, sql: str) -> list[dict]:
    """squawk's findings for one SQL text (its JSON reporter; lines are 0-based)."""
    with tempfile.TemporaryDirectory(prefix="lint-") as tmp:
        path = os.path.join(tmp, "revision.sql")
        with open(path, "w", encoding="utf-8") as f:
            f.write(sql)
        try:
            proc = subprocess.run(
                [squawk, "--reporter", "json", path], capture_output=True, text=True, timeout=120, check=False
            )
        except FileNotFoundError:
            raise LintError(f"squawk not found at {squawk!r}: install squawk-cli or set the path") from None
    try:
        findings = json.loads(proc.stdout or "[]")
    except ValueError:
        raise LintError(f"squawk failed: {(proc.stderr or proc.stdout).strip()[:300]}") from None
    lines = sql.splitlines()
    return [
        {
            "rule": f.get("rule_name", "?"),
            "statement": statement_at(lines, int(f.get("line", 0))),
            "message": f.get("message", ""),
        }
        for f in findings
    ]


_RUNNING = re.compile(r"^-- Running upgrade (?:\S+ )?-> (?P<rev>\S+)\s*$", re.M)


def render_in_one_call(chain, ci: pgconn.ConnInfo, plan, python: str | None) -> list[dict] | None:
    """All pending revisions' SQL from one Alembic call (one interpreter start, not one per revision).

    The output is split at Alembic's "-- Running upgrade a -> b" markers; each part gets the session
    settings rendered before the first marker (lock_timeout, statement_timeout), as it would when run.
    None when the call fails, so the caller can render revision by revision and name the culprit.
    """
    span = f"{plan.current}:{plan.target}" if plan.current else plan.target
    with pgconn.pgpass_env(ci) as base_env:
        env = alembic_runner._child_env(ci, base_env)
        proc = subprocess.run(
            alembic_runner.alembic_argv(
                chain.config_path, alembic_runner.Options(), "upgrade", span, "--sql", python=python
            ),
            cwd=os.path.dirname(chain.config_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if proc.returncode != 0:
        return None
    out = proc.stdout
    marks = list(_RUNNING.finditer(out))
    if [m.group("rev") for m in marks] != list(plan.pending):
        return None
    # A revision's part starts at the BEGIN that opens its transaction (if any) just before its marker.
    starts, previous = [], 0
    for m in marks:
        begin = out.rfind("BEGIN;", previous, m.start())
        starts.append(begin if begin != -1 else m.start())
        previous = m.end()
    header = out[: starts[0]] if starts else ""
    ends = [*starts[1:], len(out)]
    return [
        {"revision": m.group("rev"), "sql": header + out[start:end], "error": None}
        for m, start, end in zip(marks, starts, ends, strict=True)
    ]


def lint(
    config_path: str,
    ci: pgconn.ConnInfo,
    current: str | None,
    target: str,
    pending: list[str],
    squawk: str,
    python: str | None = None,
) -> dict:
    """Per pending revision: its violations and its approvals; nothing touches the database."""
    chain = alembic_runner.load_chain(config_path)
    plan = alembic_runner.Plan(current=current, target=target, pending=pending)
    parts = render_in_one_call(chain, ci, plan, python)
    if parts is None:  # some revision cannot render offline: one call per revision names it
        _text, parts = alembic_runner.render_sql(chain, ci, plan, alembic_runner.Options(), python)
    revisions = []
    for part in parts:
        if part["error"]:
            violations = [
                {"rule": "cannot-render-offline", "statement": "", "message": part["error"]},
            ]
            approved: list[dict] = []
        else:
            sql = ALEMBIC_VERSION_DDL.sub("", part["sql"], count=1)
            approved, violations = approvals(sql)
            violations += run_squawk(squawk, sql)
        revisions.append({"revision": part["revision"], "violations": violations, "approved": approved})
    flat = [{"revision": r["revision"], **v} for r in revisions for v in r["violations"]]
    return {"revisions": revisions, "violations": flat}


def describe(violation: dict) -> str:
    where = f": {violation['statement']}" if violation["statement"] else ""
    return f"revision {violation['revision']}, rule {violation['rule']}{where} ({violation['message']})"
