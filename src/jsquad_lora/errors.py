"""The one error type users see: bad input, named by file, record and fix.

Every command catches `InputError` at the edge (cli.py), prints its message and exits with 2;
a traceback is always a bug in this tool, never the user's fault.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with a file or value the user gave us.

    `source` is the file (or option) at fault, `where` the record in it (an id or a JSON path),
    `fix` what the user should do about it.
    """

    def __init__(self, source: object, problem: str, *, where: str | None = None, fix: str | None = None):
        self.source = str(source)
        self.problem = problem
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        place = f"{self.source}: {self.where}" if self.where else self.source
        text = f"error: {place}: {self.problem}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text
