"""The one error type users see: bad input, named by file, record and fix.

Every command catches `InputError` at the edge (cli.py), prints its message and exits with 2;
a traceback is always a bug in this tool, never the user's fault.
"""

from __future__ import annotations

#: the longest a user's value is echoed in a message: longer ones are cut, saying how long they were
SHOWN_CHARS = 80
#: the longest each part of a message (file, place, problem, fix) is printed
PART_CHARS = 1000


def shown(text: str) -> str:
    """`text` safe to print: lone surrogates as backslash escapes instead of an encoding error."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` printable (`shown`) and at most about `limit` characters: a longer one keeps its start and
    says how long it was."""
    text = shown(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters in all)"


def brief(value: object, limit: int = SHOWN_CHARS) -> str:
    """A user's value as an error message shows it: its repr, cut to `limit` characters."""
    return cut(repr(value), limit)


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
        """The message, each part printable and bounded (a value the user gave may be any size)."""
        place = cut(self.source, PART_CHARS) + (f": {cut(self.where, PART_CHARS)}" if self.where else "")
        text = f"error: {place}: {cut(self.problem, PART_CHARS)}"
        if self.fix:
            text += f"\n  fix: {cut(self.fix, PART_CHARS)}"
        return text
