"""Errors a user can act on.

A `UserError` is a mistake in what the user wrote or asked for (a bad recipe, an
unknown backend, a missing file). The CLI prints its message alone and exits 2;
anything else is portaft's own failure and exits 1.
"""


class UserError(Exception):
    """A mistake the user can fix; the message says what, where and what to do."""

    exit_code = 2


class RecipeError(UserError):
    """The recipe is invalid; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {count} in the recipe:\n{lines}")


class BackendUnavailable(UserError):
    """A backend was asked for by name but cannot run here."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception's message, its first line only (what a note or a message quotes), cut at `limit`."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]
