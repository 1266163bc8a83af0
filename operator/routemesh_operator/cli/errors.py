"""The CLI's exit codes, and the error that carries one with a message that says what to do.

Raised by `cluster`, `sidecars` and `explain`; `main` prints the message and exits with the code.
No I/O here.
"""

from __future__ import annotations

OK = 0
FINDING = 1  # the command worked and found a problem: an invalid policy, a NACK, no route
USAGE = 2  # argparse's own code for bad arguments
NOT_FOUND = 3  # no such policy, or no route table for it yet
UNREACHABLE = 4  # no cluster (or no sidecar) at the address
REFUSED = 5  # the API server refused us: authentication or RBAC


class CliError(Exception):
    """A failure to report to the user: `message` says what happened and what to do."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
