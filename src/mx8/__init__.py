"""mx8: feed training jobs from object storage."""

from mx8._resolve import resolve_manifest_hash
from mx8_common.errors import Mx8Error

__version__ = "0.1.0"
__all__ = ["Mx8Error", "__version__", "resolve_manifest_hash"]
