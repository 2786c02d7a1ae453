"""Documentation shared by every module that connects with module_utils.pgconn.CONN_ARGSPEC: the options a
play sets once with module_defaults for group/pgmigrate.pipeline.postgres. A module that connects elsewhere
(the maintenance database, staging) documents that option again; its own text wins.
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_db:
    description: The target database (the inventory's C(db_name)).
    type: str
    required: true
  login_user:
    description: The migration role (the inventory's C(db_migration_user)).
    type: str
    required: true
  login_password:
    description:
      - The migration role's password. Declared C(no_log), so Ansible scrubs it from every result and message.
      - Never returned, and never in a child process's argv or environment; child processes (pg_dump,
        pg_restore, Alembic) read it from a private 0600 pgpass file that lives as long as they do.
    type: str
    default: ""
  login_host:
    description: Database server host.
    type: str
    default: 127.0.0.1
  login_port:
    description: Database server port.
    type: int
    default: 5432
  connect_timeout:
    description: Seconds to wait for a connection.
    type: int
    default: 10
"""
