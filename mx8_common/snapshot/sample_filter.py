"""Which listed objects are samples: all of them, or images the way torchvision finds them.

``files="all"`` (the default) makes every object under the link a sample. ``files="images"``
is torchvision ``ImageFolder``'s rule, which ``mx8.vision.ImageFolderLoader`` uses: a sample
is a file inside a class folder whose name ends in one of ``IMAGE_EXTENSIONS`` (any case);
hidden files and folders (a path component starting with ``.``: ``.DS_Store``,
``.ipynb_checkpoints/``, ``._x.jpg``) and files directly under the root (a README) are
skipped, not refused. The choice is part of the snapshot's intent key, so both kinds of
snapshot of one folder live side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from mx8_common.errors import ConfigError, LabelError

__all__ = [
    "FILE_SETS",
    "IMAGE_EXTENSIONS",
    "Files",
    "SampleCounter",
    "is_sample",
    "validate_files",
]

Files = Literal["all", "images"]
FILE_SETS: tuple[str, ...] = ("all", "images")
#: torchvision's IMG_EXTENSIONS: the file names ``files="images"`` keeps.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def validate_files(files: str) -> Files:
    """``files`` if it names a known set, else a ``ConfigError`` listing them."""
    if files not in FILE_SETS:
        raise ConfigError(f"files={files!r} is unknown; use one of {', '.join(FILE_SETS)}")
    return files  # type: ignore[return-value]


def is_sample(files: Files, key: str) -> bool:
    """Whether ``key`` (relative to the dataset root) is a sample under ``files``."""
    if files == "all":
        return True
    if "/" not in key or key.startswith(".") or "/." in key:
        return False  # loose at the root, or hidden somewhere on its path
    return key.lower().endswith(IMAGE_EXTENSIONS)


class SampleCounter:
    """What one indexing run's filter skipped, and which class folders kept a sample."""

    def __init__(self) -> None:
        self.skipped = 0
        self.skipped_example: str | None = None
        self._classes: set[str] = set()

    def keep(self, page: Sequence[tuple[str, int]], files: Files) -> list[tuple[str, int]]:
        """The samples of one listing page ``(key, size)``."""
        kept = [item for item in page if is_sample(files, item[0])]
        if len(kept) != len(page):
            self.skipped += len(page) - len(kept)
            if self.skipped_example is None:
                self.skipped_example = next(k for k, _ in page if not is_sample(files, k))
        self._classes.update(key.partition("/")[0] for key, _size in kept)
        return kept

    def check_classes(self, class_names: Sequence[str], link: str) -> None:
        """Name the class folders the filter left without a sample, as torchvision does."""
        empty = [name for name in class_names if name not in self._classes]
        if empty:
            raise LabelError(
                f"{link}: class folder(s) {', '.join(map(repr, empty[:5]))} hold no image "
                f"file ({' '.join(IMAGE_EXTENSIONS)}); add images, or remove the folder or hide "
                "it (a name starting with '.')",
                link=link,
            )

    def skipped_note(self) -> str:
        """`` (N objects skipped ..., e.g. 'x')`` for an error message, or ``""``."""
        if not self.skipped:
            return ""
        return (
            f" ({self.skipped} objects skipped as not images inside class folders, "
            f"e.g. {self.skipped_example!r})"
        )
