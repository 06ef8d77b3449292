"""One place that decides when a progress bar is shown."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_enabled(requested: bool) -> bool:
    """Show a bar only when asked for and stderr is a terminal (so CI logs stay clean)."""
    return bool(requested) and sys.stderr.isatty()


def progress_bar(total: int, enabled: bool, desc: str) -> tqdm:
    """A tqdm bar over ``total`` steps, silent unless :func:`progress_enabled`."""
    return tqdm(total=total, desc=desc, disable=not progress_enabled(enabled), leave=False)
