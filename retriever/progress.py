"""Progress bars that follow the logger level (shown at INFO or DEBUG, hidden at WARNING), as
sentence-transformers does. Only decides whether to show; never prints itself."""

from __future__ import annotations

import logging


def show_progress(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether the ``retriever`` logger is enabled for INFO."""
    if explicit is not None:
        return explicit
    return logging.getLogger("retriever").isEnabledFor(logging.INFO)
