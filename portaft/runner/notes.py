"""What a run tells: notes (kept in its record and effective recipe, and printed) and
lines that are only printed. Under torchrun every process runs the spine; the first speaks."""

from __future__ import annotations

import os
from typing import Callable


class Notes(list):
    def __init__(self, echo: Callable[[str], None]):
        super().__init__()
        self.echo = echo if int(os.environ.get("RANK", "0")) == 0 else (lambda _: None)

    def add(self, *lines: str) -> None:
        """Record and print each line."""
        for line in lines:
            self.append(line)
            self.say(line)

    def say(self, line: str) -> None:
        """Print a line, not recorded."""
        self.echo(f"portaft: {line}")
