"""mx8.vision.ImageFolderLoader over real PNG, JPEG and WebP files made with Pillow."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data
from PIL import Image, features
from structlog.testing import capture_logs

import mx8
from mx8.vision import ImageFolderLoader, decode_image

# One solid colour per class: decoded pixels must come back as that colour.
COLORS = {"cat": (200, 30, 40), "dog": (20, 180, 60), "fish": (30, 60, 220)}
WEBP = features.check("webp")


def _encode(color: tuple[int, int, int], fmt: str, size: tuple[int, int], mode: str) -> bytes:
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


# (format, file suffix, source size, mode): large JPEGs exercise draft-mode downscaling.
VARIANTS = [
    ("PNG", "png", (40, 30), "RGB"),
    ("PNG", "png", (17, 50), "RGBA"),
    ("PNG", "png", (64, 64), "P"),
    ("JPEG", "jpg", (640, 480), "RGB"),
    ("JPEG", "jpeg", (33, 21), "RGB"),
    ("BMP", "bmp", (20, 10), "RGB"),
    ("TIFF", "tif", (12, 9), "RGB"),
    ("PPM", "ppm", (7, 5), "RGB"),
    ("JPEG", "JPG", (16, 16), "RGB"),  # extensions match in any case
] + ([("WEBP", "webp", (50, 40), "RGB")] if WEBP else [])


def make_image_folder(root: Path, *, per_variant: int = 1) -> int:
    """``root/<class>/<n>.<ext>`` in every variant; returns the number of images."""
    n = 0
    for cls, color in COLORS.items():
        (root / cls).mkdir(parents=True)
        for v, (fmt, ext, size, mode) in enumerate(VARIANTS):
            for k in range(per_variant):
                (root / cls / f"{v}-{k}.{ext}").write_bytes(_encode(color, fmt, size, mode))
                n += 1
    return n


@pytest.fixture
def folder(tmp_path: Path, store_root: str) -> tuple[str, int]:
    root = tmp_path / "images"
    return str(root), make_image_folder(root)


def _check_colors(images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Each image is its class's colour (JPEG/WebP are lossy: allow a few levels)."""
    scale = 255.0 if images.dtype == torch.float32 else 1.0
    for img, label in zip(images, labels, strict=True):
        mean = img.to(torch.float64).mean(dim=(1, 2)) * scale
        want = torch.tensor(COLORS[classes[int(label)]], dtype=torch.float64)
        assert torch.allclose(mean, want, atol=4), (mean, want)


def test_image_folder_loader_yields_float_images_labels_and_classes(
    folder: tuple[str, int],
) -> None:
    link, n = folder
    loader = ImageFolderLoader(link, resize=(32, 24), batch_size=4, shuffle=True, seed=1)
    assert loader.classes == ["cat", "dog", "fish"]
    assert len(loader) == -(-n // 4)
    seen = Counter[int]()
    steps = 0
    for images, labels in loader:
        steps += 1
        assert images.dtype == torch.float32
        assert images.shape == (len(labels), 3, 24, 32)  # resize is (width, height)
        assert images.is_contiguous()
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        assert labels.dtype == torch.int64
        _check_colors(images, labels, loader.classes)
        seen.update(labels.tolist())
    assert steps == len(loader)
    assert seen == {i: n // 3 for i in range(3)}
    assert loader.stats()["samples"] == n
    assert loader.stats()["decode_errors"] == 0


def test_image_folder_loader_to_float_false_gives_uint8(folder: tuple[str, int]) -> None:
    link, n = folder
    loader = ImageFolderLoader(link, resize=(8, 8), to_float=False, batch_size=n)
    [(images, labels)] = list(loader)
    assert images.dtype == torch.uint8
    assert images.shape == (n, 3, 8, 8)
    assert labels.tolist() == sorted(labels.tolist())  # unshuffled: class by class
    _check_colors(images, labels, loader.classes)


def test_image_folder_loader_float_images_equal_torch_scaling_of_the_uint8_images(
    folder: tuple[str, int],
) -> None:
    # The float path scales in numpy on the decode threads; it must give exactly what
    # torchvision's ToTensor (uint8 -> float32, / 255) gives for the same pixels.
    link, n = folder
    [(floats, labels_f)] = list(ImageFolderLoader(link, resize=(16, 12), batch_size=n))
    [(ints, labels_i)] = list(
        ImageFolderLoader(link, resize=(16, 12), to_float=False, batch_size=n)
    )
    assert torch.equal(labels_f, labels_i)
    assert torch.equal(floats, ints.to(torch.float32).div(255.0))


def test_decode_image_downscales_a_large_jpeg_to_the_requested_size() -> None:
    data = _encode((10, 20, 30), "JPEG", (1600, 1200), "RGB")
    arr = decode_image(data, (100, 50))
    assert arr.shape == (3, 50, 100) and arr.dtype == np.uint8
    assert np.allclose(arr.reshape(3, -1).mean(axis=1), (10, 20, 30), atol=3)


def _corrupt(root: Path) -> Path:
    bad = root / "dog" / "zz-broken.jpg"
    good = _encode((1, 2, 3), "JPEG", (64, 64), "RGB")
    bad.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    (root / "cat" / "zz-text.png").write_bytes(b"this is not an image at all\n")
    return bad


def test_image_folder_loader_corrupt_image_raises_decode_error_naming_it(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    make_image_folder(root)
    _corrupt(root)
    loader = ImageFolderLoader(str(root), resize=(16, 16), batch_size=64)
    with pytest.raises(mx8.DecodeError) as info:
        list(loader)
    # The first bad sample in batch order is the loose text file in "cat".
    assert info.value.location == str(root / "cat" / "zz-text.png")
    assert info.value.location in str(info.value)
    assert "on_decode_error='skip'" in str(info.value)
    assert info.value.__cause__ is not None


def test_image_folder_loader_skip_mode_drops_and_counts_corrupt_images(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    n = make_image_folder(root)
    _corrupt(root)
    loader = ImageFolderLoader(str(root), resize=(16, 16), batch_size=5, on_decode_error="skip")
    batches = list(loader)
    assert len(batches) == len(loader)  # every step is still taken
    total = sum(len(labels) for _, labels in batches)
    assert total == n
    assert loader.stats()["decode_errors"] == 2
    assert loader.stats()["samples"] == n + 2
    for images, labels in batches:
        _check_colors(images, labels, loader.classes)


def test_image_folder_loader_without_class_folders_is_a_label_error(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(_encode((1, 1, 1), "PNG", (4, 4), "RGB"))
    with pytest.raises(mx8.LabelError, match="class folder") as info:
        ImageFolderLoader(str(root))
    assert str(root) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_mode": "none"}, "needs class labels"),
        ({"on_decode_error": "ignore"}, "on_decode_error"),
        ({"resize": (0, 10)}, "resize"),
        ({"resize": 224}, "resize"),
        ({"decode_threads": 0}, "decode_threads"),
    ],
)
def test_image_folder_loader_bad_arguments_are_config_errors(
    folder: tuple[str, int], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(mx8.ConfigError, match=match):
        ImageFolderLoader(folder[0], **kwargs)


def test_image_folder_loader_in_torch_workers_yields_every_image_once(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    n = make_image_folder(root, per_variant=2)
    loader = ImageFolderLoader(str(root), resize=(16, 12), batch_size=4, decode_threads=2)
    # Decode once in the parent first: forked workers inherit a pool whose threads exist
    # only in the parent, and must make their own.
    it = iter(loader)
    next(it)
    it.close()
    loader.set_epoch(0)
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=2, timeout=60)
    got = list(dl)
    assert len(got) == len(loader)
    labels = torch.cat([lab for _, lab in got])
    assert Counter(labels.tolist()) == {i: n // 3 for i in range(3)}
    single = ImageFolderLoader(str(root), resize=(16, 12), batch_size=4)
    for (a, la), (b, lb) in zip(got, single, strict=True):
        assert torch.equal(la, lb)
        assert torch.equal(a, b)  # the same pixels whichever process decoded them
    loader.close()
    single.close()


def test_mx8_vision_is_the_module() -> None:
    assert mx8.vision.ImageFolderLoader is ImageFolderLoader
    assert issubclass(ImageFolderLoader, mx8.DataLoader)


def test_image_folder_loader_persistent_workers_yield_every_epoch_in_full(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    n = make_image_folder(root)
    loader = ImageFolderLoader(str(root), resize=(8, 8), batch_size=4, shuffle=True, seed=2)
    dl = torch.utils.data.DataLoader(
        loader, batch_size=None, num_workers=2, persistent_workers=True, timeout=60
    )
    epochs = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        epochs.append(torch.cat([labels for _, labels in dl]).tolist())
    assert [len(e) for e in epochs] == [n, n, n]
    for epoch, labels in enumerate(epochs):
        assert Counter(labels) == {i: n // 3 for i in range(3)}
        single = ImageFolderLoader(
            str(root), resize=(8, 8), batch_size=4, shuffle=True, seed=2, epoch=epoch
        )
        assert labels == torch.cat([lab for _, lab in single]).tolist()
        single.close()
    loader.close()


def _stray_files(root: Path) -> list[Path]:
    """What a real image folder collects: Finder/Jupyter/AppleDouble files, notes, a README."""
    strays = [
        root / ".DS_Store",
        root / "README.txt",
        root / "cat" / ".DS_Store",
        root / "dog" / "notes.txt",
        root / "dog" / "._0-0.png",  # AppleDouble: hidden, though its name ends in .png
        root / ".ipynb_checkpoints" / "a.png",
        root / "fish" / ".cache" / "b.png",
    ]
    for path in strays:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an image\n")
    (root / "stray.png").write_bytes(_encode((1, 2, 3), "PNG", (4, 4), "RGB"))  # not in a class
    return strays


def test_image_folder_loader_skips_hidden_and_non_image_files_like_torchvision(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    n = make_image_folder(root)
    _stray_files(root)
    with capture_logs() as logs:
        loader = ImageFolderLoader(str(root), resize=(8, 8), batch_size=5)
    assert loader.classes == ["cat", "dog", "fish"]
    assert loader.loader.total_samples == n
    labels = torch.cat([lab for _, lab in loader]).tolist()
    assert Counter(labels) == {i: n // 3 for i in range(3)}
    assert loader.stats()["decode_errors"] == 0
    [summary] = [e for e in logs if e["event"] == "snapshot_index_summary"]
    assert summary["files"] == "images" and summary["skipped_objects"] == 8
    # mx8.load reads every object of the same folder: another snapshot, side by side.
    assert mx8.load(str(root)).total_samples == n + 8
    assert mx8.resolve_manifest_hash(str(root), files="images") == loader.manifest_hash
    loader.close()


def test_image_folder_loader_names_a_class_folder_without_images(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "images"
    make_image_folder(root)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_bytes(b"label more\n")
    with pytest.raises(mx8.LabelError, match="'notes' hold no image file") as info:
        ImageFolderLoader(str(root))
    assert str(root) in str(info.value)


def test_image_folder_loader_names_a_loose_file_when_there_is_no_class_folder(
    tmp_path: Path, store_root: str
) -> None:
    root = tmp_path / "flat"
    root.mkdir()
    (root / "0.png").write_bytes(_encode((1, 1, 1), "PNG", (4, 4), "RGB"))
    with pytest.raises(mx8.LabelError, match="no class folder") as info:
        ImageFolderLoader(str(root))
    assert "'0.png'" in str(info.value)
