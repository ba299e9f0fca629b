"""What image builds and lab deploys report progress to; the CLI owns the display."""

from __future__ import annotations

from typing import Any, Protocol


class ProgressSink(Protocol):
    """rich.progress.Progress fits."""

    def add_task(self, description: str, total: float | None = ..., **fields: Any) -> Any: ...

    def update(self, task_id: Any, **fields: Any) -> None: ...
