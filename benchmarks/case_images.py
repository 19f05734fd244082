"""Images: ``mx8.vision.ImageFolderLoader`` vs the torchvision ImageFolder recipe.

torchvision does not install beside this torch, so the baseline is written out as what
``ImageFolder(root, transform=Compose([Resize((224, 224)), ToTensor()]))`` does per image:
PIL open, convert RGB, resize, to a float CHW tensor in [0, 1]; then
``DataLoader(num_workers=2, batch_size=32)``. Both read the same local JPEGs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_env import BenchEnv
from benchmarks.report import Row

__all__ = ["run", "write_images"]

CASE = "images"
SIZE = (224, 224)
BATCH = 32


def write_images(root: Path, count: int, classes: int = 4) -> list[tuple[str, int]]:
    """``count`` 320x280 JPEGs (smooth gradients plus noise) in ``classes`` class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:280, 0:320]
    samples = []
    for i in range(count):
        label = i % classes
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([(xx + i) % 256, (yy * 2 + i) % 256, (xx + yy) % 256], axis=-1)
        noise = rng.integers(0, 32, size=base.shape)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"img-{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        samples.append((str(path), label))
    return samples


class _ImageFolderRecipe:
    """torchvision's ImageFolder + Resize + ToTensor, written out with PIL and torch."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        path, label = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        img = img.resize(SIZE, Image.Resampling.BILINEAR)
        tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255.0)
        return tensor, label


def _baseline_rate(samples: list[tuple[str, int]]) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(_ImageFolderRecipe(samples), batch_size=BATCH, num_workers=2)
    t0 = time.perf_counter()
    n = 0
    for images, _labels in loader:
        assert images.shape[1:] == (3, SIZE[1], SIZE[0])
        n += len(images)
    seconds = time.perf_counter() - t0
    assert n == len(samples)
    return n / seconds


def _mx8_rate(root: Path, expect: int) -> float:
    import mx8

    loader = mx8.vision.ImageFolderLoader(str(root), resize=SIZE, batch_size=BATCH)
    t0 = time.perf_counter()
    n = 0
    for images, _labels in loader:
        assert images.shape[1:] == (3, SIZE[1], SIZE[0])
        n += len(images)
    seconds = time.perf_counter() - t0
    loader.close()
    assert n == expect, (n, expect)
    return n / seconds


def run(env: BenchEnv) -> list[Row]:
    count = env.size(192, 2000)
    root = env.scratch("images")
    samples = write_images(root, count)
    _mx8_rate(root, count)  # resolve the snapshot; page-cache the files for both sides
    mx8_vals, base_vals = [], []
    for _ in range(env.repeats):
        base_vals.append(_baseline_rate(samples))
        mx8_vals.append(_mx8_rate(root, count))
    return [
        Row(
            CASE,
            f"ImageFolderLoader 224x224, {count} JPEGs 320x280",
            "images/s",
            statistics.median(mx8_vals),
            statistics.median(base_vals),
            "ImageFolder recipe + DataLoader(nw=2)",
            target=1.2,
            samples=mx8_vals,
            baseline_samples=base_vals,
            note="baseline: torchvision's ImageFolder+Resize+ToTensor written out (no torchvision)",
        )
    ]
