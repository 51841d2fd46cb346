"""One exception family. Each error carries the exit code of DESIGN.md's table.

A message says what is wrong, why, and what to do next; the CLI prints it as one
line (`error: ...`) without a traceback unless `-v` is given.
"""
from __future__ import annotations


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose. Exit code 2 unless a subclass says otherwise."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}; {hint}")


class UsageError(EdgekitError):
    """Bad usage or bad input: a file that is not what it claims, an option out of range."""

    exit_code = 2


class GateFailed(EdgekitError):
    """A gate failed: latency budget, regression against a baseline, accuracy or parity budget."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, result: object = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class BackendUnavailable(EdgekitError):
    """The backend, device or optional library is not available on this machine."""

    exit_code = 4
