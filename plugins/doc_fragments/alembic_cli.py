"""Documentation shared by the modules that run the Alembic CLI (alembic_upgrade, alembic_downgrade)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  alembic_config:
    description: Path of the project's C(alembic.ini); Alembic runs from its directory.
    type: path
    required: true
  lock_timeout:
    description: Passed as C(-x lock_timeout=); empty leaves env.py's default.
    type: str
    default: ""
  statement_timeout:
    description: Passed as C(-x statement_timeout=); empty leaves env.py's default.
    type: str
    default: ""
  batch_size:
    description: Passed as C(-x batch_size=) (rows per backfill batch, a commit each); 0 leaves env.py's
      default.
    type: int
    default: 0
  batch_sleep:
    description: Passed as C(-x batch_sleep=) (pause between backfill batches); empty leaves env.py's default.
    type: str
    default: ""
  progress_file:
    description: File to append progress lines to (created 0600); empty for none.
    type: path
    default: ""
  version_table:
    description: Alembic's version table (as the project's env.py names it).
    type: str
    default: alembic_version
"""
