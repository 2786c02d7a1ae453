"""Documentation shared by every module that connects with module_utils.pgconn.CONN_ARGSPEC.

Each module still documents login_db, login_user and login_password itself: which database and role, and
why, differ from module to module.
"""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
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
