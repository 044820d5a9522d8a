"""Exceptions raised on bad input.

Every message names the file (and line or id where there is one) and what was expected.
"""

from __future__ import annotations


class HardnegError(Exception):
    """Base class of the project's own errors."""


class DataError(HardnegError, ValueError):
    """A collection file is missing or malformed; the message names file, line and id."""


class MissingDependencyError(HardnegError, ImportError):
    """An optional backend is not installed; the message names the pip command."""
