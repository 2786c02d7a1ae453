"""The progress file: timestamped lines a long step appends while it works.

One writer for every step (dump, migration, downgrade, restore), so a run's progress file reads the same
throughout; the play's ``progress`` callback prints its last line while the step runs in the background,
and an operator can ``tail -f`` it. Created 0600 in a 0700 directory: lines name databases and files.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime


class Progress:
    """Appends ``<UTC time> <text>`` lines to ``path``; does nothing without a path.

    The file is created up front, so a path that cannot be written is refused before the step starts, not
    half-way through it: ``error`` is the exception class the caller reports refusals with.
    """

    def __init__(self, path: str | None, error: type[Exception] = OSError):
        self.path = path or None
        if self.path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename and exc.filename != self.path else ""
                raise error(f"cannot write the progress file {self.path}: {exc.strerror}{where}") from None

    def line(self, text: str) -> None:
        if not self.path:
            return
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {text}\n")
