"""hardneg's batch jobs and command line, built from ``retriever`` parts (never imported by it)."""

from __future__ import annotations

__version__ = "0.1.0"
