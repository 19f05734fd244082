"""files="images": torchvision ImageFolder's rule for which listed objects are samples."""

from __future__ import annotations

import pytest

from mx8_common.errors import ConfigError
from mx8_common.snapshot.sample_filter import IMAGE_EXTENSIONS, is_sample, validate_files


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("cat/1.jpg", True),
        ("cat/1.JPEG", True),
        ("cat/sub/deep.webp", True),
        ("cat/1.tiff", True),
        ("cat/1.txt", False),
        ("cat/jpg", False),
        ("cat/.DS_Store", False),
        ("cat/._1.jpg", False),  # AppleDouble metadata, hidden
        (".ipynb_checkpoints/1.png", False),
        ("cat/.thumbs/1.png", False),
        ("1.png", False),  # directly under the root: in no class
        (".DS_Store", False),
    ],
)
def test_is_sample_images_follows_torchvision(key: str, kept: bool) -> None:
    assert is_sample("images", key) is kept
    assert is_sample("all", key)


def test_image_extensions_are_torchvisions() -> None:
    assert set(IMAGE_EXTENSIONS) == {
        ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"
    }  # fmt: skip


def test_validate_files_names_the_choices() -> None:
    assert validate_files("images") == "images"
    with pytest.raises(ConfigError, match="all, images"):
        validate_files("pictures")
