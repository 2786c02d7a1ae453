"""Helpers of the injected-fault suite (tests/test_faults.py, tests/test_security.py).

They inject faults into real runs of playbooks/migrate.yml and describe a database completely enough to
prove that a failed run left it exactly as it was.
"""
