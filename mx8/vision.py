"""``mx8.vision``: image-folder datasets as ``(images, labels)`` tensors.

``ImageFolderLoader`` reads a dataset laid out as ``<link>/<class>/<image>`` (the
imagefolder label mode) and decodes each batch with Pillow into one uint8 array, then hands
it to torch once (``torch.from_numpy``): no per-pixel Python. Decoding runs in a thread
pool because Pillow releases the GIL while it decodes and resizes; JPEGs are decoded at a
reduced DCT scale first (``Image.draft``) when the target size is much smaller, which cuts
decode time for large photos several-fold.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from mx8.batch import Batch
from mx8.data_loader import DataLoader
from mx8_common.errors import ConfigError, DecodeError, LabelError
from mx8_common.obs.events import emit
from mx8_common.snapshot.sample_filter import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_FORMATS", "ImageFolderLoader", "decode_image"]

#: Pillow format names ``ImageFolderLoader`` accepts; anything else is a ``DecodeError``.
#: They cover torchvision's image extensions (``IMAGE_EXTENSIONS``; PPM covers .pgm).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "PPM", "TIFF")
_ON_DECODE_ERROR = ("raise", "skip")
# Antialiased bilinear: what torchvision's Resize does on PIL images, and much cheaper than
# Lanczos at a quality difference a network does not notice.
_RESAMPLE = Image.Resampling.BILINEAR
_MAX_PIXEL = np.float32(255)


def decode_image(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """``data`` (a JPEG, PNG, WebP, BMP, PPM/PGM or TIFF file) as a uint8 ``[3, H, W]`` array.

    ``size`` is ``(width, height)`` (Pillow's convention); the image is stretched to it,
    not cropped. Raises Pillow's own errors; ``ImageFolderLoader`` wraps them.
    """
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
        if img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`).
            img.draft("RGB", size)
        rgb = img.convert("RGB")  # loads the pixels; grey, palette and alpha become RGB
    if rgb.size != size:
        rgb = rgb.resize(size, _RESAMPLE)
    return np.asarray(rgb).transpose(2, 0, 1)


class ImageFolderLoader(DataLoader):
    """``(images, labels)`` batches of an image-folder dataset.

    ``images`` is a torch float32 ``[B, 3, H, W]`` tensor in ``[0, 1]`` (uint8 in ``[0, 255]``
    when ``to_float=False``), ``labels`` an int64 ``[B]`` tensor of class ids, and
    ``classes[label]`` the class (folder) name. ``resize`` is ``(width, height)``, Pillow's
    order: ``resize=(320, 240)`` gives ``H=240, W=320``. Every image is stretched to it.

    Like torchvision's ``ImageFolder`` it reads only image files inside class folders
    (``files="images"``: names ending in ``IMAGE_EXTENSIONS``, any case): hidden files and
    folders (``.DS_Store``) and files directly under the root (a README) are skipped, and
    ``snapshot_index_summary`` counts them. A class folder left without an image is a
    ``LabelError`` naming it. ``files="all"`` makes every object a sample.

    A corrupt or unreadable image raises ``DecodeError`` naming the object, or with
    ``on_decode_error="skip"`` is left out of its batch (which then holds fewer samples;
    never none: a batch of B=0 is still yielded so every rank takes the same number of
    steps) and counted in ``stats()["decode_errors"]``.

    The remaining arguments are those of ``mx8.DataLoader``. Works in a ``for`` loop and in
    ``torch.utils.data.DataLoader(loader, batch_size=None, num_workers=N)``.
    """

    def __init__(
        self,
        link: str,
        *,
        resize: tuple[int, int] = (224, 224),
        to_float: bool = True,
        batch_size: int = 32,
        shuffle: bool | None = None,
        seed: int | None = None,
        epoch: int = 0,
        decode_threads: int | None = None,
        on_decode_error: str = "raise",
        recursive: bool = True,
        store: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        max_inflight_bytes: int | None = None,
        agent: str | None = None,
        job: str | None = None,
        label_mode: str = "auto",
        drop_last: bool = False,
        fetch_concurrency: int | None = None,
        files: str = "images",
    ) -> None:
        self.size = _check_size(resize)
        if on_decode_error not in _ON_DECODE_ERROR:
            raise ConfigError(
                f"on_decode_error={on_decode_error!r} is unknown; use 'raise' or 'skip'"
            )
        if label_mode not in ("auto", "imagefolder"):
            raise ConfigError(
                f"ImageFolderLoader needs class labels, but label_mode={label_mode!r}; use "
                "label_mode='imagefolder' (or 'auto'), or mx8.load() for unlabeled data"
            )
        if decode_threads is not None and decode_threads < 1:
            raise ConfigError(f"decode_threads is {decode_threads}; it must be at least 1")
        self.to_float = to_float
        self.on_decode_error = on_decode_error
        self.decode_threads = decode_threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._decode_errors = 0
        super().__init__(
            link,
            recursive=recursive,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            epoch=epoch,
            label_mode=label_mode,
            store=store,
            max_inflight_bytes=max_inflight_bytes,
            agent=agent,
            job=job,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            fetch_concurrency=fetch_concurrency,
            files=files,
        )
        if self._embedded and not self.classes:
            self.close()
            raise LabelError(_no_labels_message(link), link=link)

    # -- decoding ---------------------------------------------------------------------

    def collate(self, batch: Batch) -> tuple[Any, Any]:
        """Decode ``batch`` into ``(images, labels)`` tensors."""
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - exercised only without torch
            raise ImportError(
                "ImageFolderLoader yields torch tensors; install PyTorch with "
                "`pip install mx8[torch]`"
            ) from exc

        if batch.labels is None:
            raise LabelError(_no_labels_message(self.link), link=self.link)
        width, height = self.size
        to_float = self.to_float
        # Scaling to [0, 1] happens here, per image on the decode threads, in numpy: a torch
        # op on the whole batch would wake torch's OpenMP threads, whose spin-wait after
        # each op takes CPU from the decoders (measured: 1,225 -> 1,480 images/s on 2 cores).
        # float32(x) / float32(255) is what torch's .to(float32).div_(255.0) computes.
        out = np.empty((len(batch), 3, height, width), np.float32 if to_float else np.uint8)
        views = batch.views()  # each image's bytes as read: the batch is never joined

        def decode(i: int) -> BaseException | None:
            try:
                pixels = decode_image(views[i], self.size)
                if to_float:
                    np.divide(pixels, _MAX_PIXEL, out=out[i], dtype=np.float32)
                else:
                    out[i] = pixels
            except Exception as exc:  # Pillow raises many types for bad input
                return exc
            return None

        failures = list(self._executor().map(decode, range(len(batch))))
        labels = batch.labels.astype(np.int64, copy=False)
        bad = [i for i, exc in enumerate(failures) if exc is not None]
        if bad:
            if self.on_decode_error == "raise":
                self._raise_decode_error(batch, bad[0], failures[bad[0]])
            self._skip(batch, bad, failures)
            keep = np.ones(len(batch), dtype=bool)
            keep[bad] = False
            out, labels = out[keep], labels[keep]
        return torch.from_numpy(out), torch.from_numpy(np.ascontiguousarray(labels))

    def _location(self, sample_id: int) -> str:
        table = getattr(self.loader, "table", None)
        return table.location(sample_id) if table is not None else f"sample {sample_id}"

    def _raise_decode_error(self, batch: Batch, i: int, exc: BaseException | None) -> None:
        sample_id = int(batch.sample_ids[i])
        location = self._location(sample_id)
        raise DecodeError(
            f"{location} (sample {sample_id}) is not a readable "
            f"{'/'.join(IMAGE_FORMATS)} image: {exc}; replace or remove the object and "
            "index again (link@refresh), or pass on_decode_error='skip'",
            location=location,
            sample_id=sample_id,
        ) from exc

    def _skip(self, batch: Batch, bad: Sequence[int], failures: list[Any]) -> None:
        self._decode_errors += len(bad)
        for i in bad:
            sample_id = int(batch.sample_ids[i])
            emit(
                "vision",
                "sample_decode_skipped",
                location=self._location(sample_id),
                sample_id=sample_id,
                error=str(failures[i]),
            )

    def _executor(self) -> ThreadPoolExecutor:
        # A pool inherited through fork() has no threads in the child: make a new one there.
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    max_workers=self.decode_threads, thread_name_prefix="mx8-decode"
                )
                self._pool_pid = os.getpid()
            return self._pool

    # -- lifecycle --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """``DataLoader.stats()`` plus ``decode_errors`` (images skipped in this process)."""
        out = super().stats()
        out["decode_errors"] = self._decode_errors
        return out

    def close(self) -> None:
        """Stop fetching and the decode threads; safe to call twice."""
        super().close()
        pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pool"] = None
        state["_pool_pid"] = 0
        del state["_pool_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._pool_lock = threading.Lock()


def _check_size(resize: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in resize)
    except (TypeError, ValueError):
        raise ConfigError(
            f"resize={resize!r} is not a (width, height) pair of positive integers"
        ) from None
    if width < 1 or height < 1:
        raise ConfigError(f"resize={resize!r} is not a (width, height) pair of positive integers")
    return width, height


def _no_labels_message(link: str) -> str:
    return (
        f"{link} has no class labels: ImageFolderLoader needs every image inside a class "
        "folder (<link>/<class>/<image>, at least two classes); move the images into class "
        "folders and index again (link@refresh), or read unlabeled data with mx8.load()"
    )
