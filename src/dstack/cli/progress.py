"""A light live status while a run is submitted/provisioning.

On a terminal it is a rich spinner with the current status; when stdout is piped (scripts,
CI, agents) each status change is printed once as a plain line, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import Any


class StatusReporter:
    def __init__(self, title: str) -> None:
        self.title = title
        self._status: Any = None
        self.tty = sys.stdout.isatty()

    def __enter__(self) -> StatusReporter:
        if self.tty:
            from dstack.cli.common import console

            self._status = console().status(self.title)
            self._status.__enter__()
        else:
            sys.stdout.write(self.title + "\n")
            sys.stdout.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self.title} [secondary]{text}[/]")
        else:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def wait(self, api: Any, name: str) -> Any:
        from dstack.cli.runs import status_text, wait_until_started

        return wait_until_started(
            api, name, lambda run: self.update(f"{name}: {status_text(run)}")
        )
