"""Shared core of mx8: manifest format and reader, ingest adapter, snapshots, store, events."""

from mx8_common.errors import *  # noqa: F403
from mx8_common.errors import __all__ as _errors_all

__all__ = sorted(_errors_all)
