"""The two consoles the CLI prints on, and the one place library errors become a message and an
exit code. Shared by cli.py and measure/cli.py (neither imports the other's helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console, ConsoleDimensions

from vpnlab.errors import VpnlabError

# Piped or redirected output (`inspect | less`, a CI log) has no terminal width to fit: rich would
# squeeze tables into 80 columns and cut SPIs, selectors and states to "…". Give it room instead.
PIPE_WIDTH = 200


class _Console(Console):
    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._environ.get("COLUMNS"):
            return size
        return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)


out = _Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def reported() -> Iterator[None]:
    try:
        yield
    except VpnlabError as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted", style="red", markup=False)
        raise typer.Exit(130) from None


