"""mx8: feed training jobs from object storage.

``mx8.load(link)`` yields batches of a dataset (embedded, or served by a local agent), as an
``mx8.Mx8Loader``;
``mx8.DataLoader`` is the same as a PyTorch ``IterableDataset``; ``mx8.vision`` decodes
image folders into tensors. Importing mx8 does not import torch: ``DataLoader`` and
``vision`` need it and are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mx8._loader_protocol import Mx8Loader
from mx8._resolve import resolve_manifest_hash
from mx8.batch import Batch
from mx8.loader import Loader, load
from mx8_common.errors import (
    AgentError,
    ConfigError,
    CoordinatorError,
    DecodeError,
    IntegrityError,
    LabelError,
    LinkError,
    ManifestError,
    Mx8Error,
    ObjectChangedError,
    ObjectNotFoundError,
    ResumeError,
    SnapshotError,
    StorageError,
    StoreError,
)

if TYPE_CHECKING:
    from mx8 import vision
    from mx8.data_loader import DataLoader

__version__ = "0.1.0"
__all__ = [
    "AgentError",
    "Batch",
    "ConfigError",
    "CoordinatorError",
    "DataLoader",
    "DecodeError",
    "IntegrityError",
    "LabelError",
    "LinkError",
    "Loader",
    "ManifestError",
    "Mx8Error",
    "Mx8Loader",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ResumeError",
    "SnapshotError",
    "StorageError",
    "StoreError",
    "__version__",
    "load",
    "resolve_manifest_hash",
    "vision",
]

# Names whose modules import torch: resolved on first attribute access (PEP 562) so that
# `import mx8` stays light and works without torch.
_LAZY = {"DataLoader": ("mx8.data_loader", "DataLoader"), "vision": ("mx8.vision", None)}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mx8' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
