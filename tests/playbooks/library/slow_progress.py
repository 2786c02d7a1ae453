#!/usr/bin/python
"""Test-only module: appends a numbered line to progress_file every 0.3 s for `seconds`, then returns."""

from __future__ import annotations

import time

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"progress_file": {"type": "path"}, "seconds": {"type": "float"}})
    started, n = time.monotonic(), 0
    while time.monotonic() - started < module.params["seconds"]:
        n += 1
        with open(module.params["progress_file"], "a", encoding="utf-8") as f:
            f.write(f"step {n}\n")
        time.sleep(0.3)
    module.exit_json(changed=False, steps=n)


if __name__ == "__main__":
    main()
