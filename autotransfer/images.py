"""Labelled images: ImageFolder trees or a CSV of ``path,label``, decoded once into a shared cache.

Layouts accepted by ``--data``:

- ``root/<class>/*.jpg`` (validation/test carved out by a seeded stratified split);
- ``root/{train,val|validation|valid|dev,test}/<class>/*.jpg`` (missing splits carved out of train);
- a CSV/TSV with a path column (relative to the file) and a label column.

:func:`decode_images` turns a list of files into one uint8 array per preprocessing
(shorter side resized to the model's resize size, centre-cropped square), skipping
unreadable files with a single warning.  Every trial of every backbone with that
preprocessing reads the same array.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotransfer.data import LabeledSplits, Split, encode_labels, split_missing
from autotransfer.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
SPLIT_DIRS = {"train": ("train", "training"), "validation": ("val", "validation", "valid", "dev"),
              "test": ("test", "testing")}
PATH_COLUMNS = ("path", "image", "file", "filename", "filepath", "image_path", "img")


class BadImagesWarning(UserWarning):
    """Some image files could not be read and were skipped."""


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_tree(folder: Path) -> tuple[list[str], list[str], list[Path]]:
    """(paths, labels, ignored non-image files) of a ``<class>/<image>`` tree."""
    paths, labels, ignored = [], [], []
    classes = _class_folders(folder)
    if not classes:
        raise UserError(f"{folder}: no class folders found (expected {folder}/<class>/<image files>)")
    for cls in classes:
        files = sorted(p for p in cls.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise UserError(f"{cls}: class folder {cls.name!r} holds no images; add some or remove the folder")
        paths += [str(p.resolve()) for p in images]
        labels += [cls.name] * len(images)
    return paths, labels, ignored


def _read_csv(path: Path, label_col: Optional[str], path_col: Optional[str]) -> tuple[list[str], list[str]]:
    from autotransfer.tables import LABEL_COLUMNS, read_table

    df = read_table(path)
    lower = {c.lower(): c for c in df.columns}
    pcol = path_col or next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    lcol = label_col or next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    for col, flag, what in ((pcol, "--image-col", "image path"), (lcol, "--label-col", "label")):
        if col is None or col not in df.columns:
            raise UserError(f"{path}: no {what} column found (columns: {', '.join(df.columns)}); pass {flag}")
    paths = [(path.parent / p).resolve() for p in df[pcol].astype(str)]
    missing = [str(p) for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise UserError(f"{path}: none of the {len(paths)} image paths exist (e.g. {missing[0]}); "
                        "paths are read relative to the CSV file")
    keep = [i for i, p in enumerate(paths) if p.is_file()]
    if missing:
        _warn_skipped(missing, "do not exist")
    return [str(paths[i]) for i in keep], [df[lcol].iloc[i] for i in keep]


def _warn_skipped(files: list[str], why: str) -> None:
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    warnings.warn(f"skipped {len(files)} image file(s) that {why}: {shown}", BadImagesWarning, stacklevel=3)


def read_image_task(settings: Any) -> LabeledSplits:
    """image-cls's reader (:class:`~autotransfer.tasks.spec.TaskSpec`): its options from ``settings.options``."""
    options = settings.options
    return load_image_splits(settings.data, label_col=options.get("label_col"), path_col=options.get("image_col"),
                             val_frac=settings.val_frac, test_frac=settings.test_frac, seed=settings.seed)


def load_image_splits(data: Path, *, label_col: Optional[str] = None, path_col: Optional[str] = None,
                      val_frac: Optional[float] = None, test_frac: float = 0.1, seed: int = 0) -> LabeledSplits:
    """List and label the images of ``data``; decoding happens later, once per preprocessing."""
    files: dict[str, tuple[list[str], list[str]]] = {}
    ignored: list[Path] = []
    if data.is_file():
        files["train"] = _read_csv(data, label_col, path_col)
    else:
        subdirs = {p.name.lower(): p for p in _class_folders(data)}
        split_dirs = {split: next((subdirs[n] for n in names if n in subdirs), None)
                      for split, names in SPLIT_DIRS.items()}
        if split_dirs["train"] is not None:
            for split, folder in split_dirs.items():
                if folder is not None:
                    paths, labels, skipped = _scan_class_tree(folder)
                    files[split] = (paths, labels)
                    ignored += skipped
        else:
            paths, labels, ignored = _scan_class_tree(data)
            files["train"] = (paths, labels)
    if ignored:
        _warn_skipped([str(p) for p in ignored], "are not images")
    labels, names = encode_labels({k: v[1] for k, v in files.items()}, str(data))
    splits = {k: Split(inputs=v[0], labels=labels[k]) for k, v in files.items()}
    splits = split_missing(splits, val_frac, test_frac, seed, str(data))
    source = {"data": str(data), "layout": "csv" if data.is_file() else "folders",
              "given_splits": sorted(files), "carved_splits": sorted({"validation", "test"} - set(files)),
              "ignored_files": len(ignored)}
    return LabeledSplits(splits["train"], splits["validation"], splits["test"], names, source)


def _decode_one(path: str, size: int, interpolation: str) -> Optional[np.ndarray]:
    from PIL import Image, ImageOps

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(interpolation, Image.BICUBIC)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            im = ImageOps.fit(im.convert("RGB"), (size, size), method=resample)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_images(paths: list[str], size: int, interpolation: str = "bicubic",
                  workers: int = 4) -> tuple[np.ndarray, list[int]]:
    """Decode ``paths`` to a ``(n_ok, size, size, 3)`` uint8 array; returns it and the kept indices."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda p: _decode_one(p, size, interpolation), paths))
    keep = [i for i, a in enumerate(decoded) if a is not None]
    bad = [paths[i] for i, a in enumerate(decoded) if a is None]
    if bad:
        _warn_skipped(bad, "could not be decoded (corrupt, truncated or not an image)")
    if not keep:
        return np.zeros((0, size, size, 3), dtype=np.uint8), keep
    return np.stack([decoded[i] for i in keep]), keep
