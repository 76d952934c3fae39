"""One error family. Every user-facing failure is a :class:`GradleakError`.

The CLI catches this family once and exits with status 2 and the message alone; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


class GradleakError(Exception):
    """Base class: something the user can fix. The message says what failed and what to do."""


class InputError(GradleakError, ValueError):
    """Bad input: wrong shape, non-finite values, an update that does not fit the model, ...

    With ``problems`` the message is ``message`` followed by one indented line per problem."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        self.problems = list(problems)
        lines = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"{message}:{lines}" if self.problems else message)


class CheckpointError(InputError):
    """A checkpoint that cannot resume the run: corrupt, of another run, or beyond its budget. Unlike an
    attack's own failure it stops the whole audit: the user asked to resume that run."""


class UnsupportedError(GradleakError):
    """A method cannot run on this observation; the message lists every unmet need."""

    def __init__(self, method: str, problems: list[str]):
        self.method = method
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{method} cannot run on this observation:\n{lines}")


class UnknownNameError(GradleakError, KeyError):
    """A name that no registry holds."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(kind, name)

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r}; choose one of: {', '.join(self.known)}"


class DuplicateNameError(GradleakError):
    """A registry refused a second entry under the same name."""


class UnsafeFileError(GradleakError):
    """A file that must not be loaded (pickle) or cannot be read."""
