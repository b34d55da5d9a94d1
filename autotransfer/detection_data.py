"""Object-detection data: COCO JSON, Pascal VOC and YOLO read into one form, checked once, split by image.

The three formats people hold:

- **COCO**: a JSON file (``images``, ``annotations`` with ``[x, y, width, height]`` boxes, ``categories``);
  image paths are read relative to the JSON file.  A folder holding ``train.json`` (and ``val.json`` /
  ``test.json``) gives the splits.
- **Pascal VOC**: one XML file per image (``<filename>``, ``<size>``, ``<object><name>`` and
  ``<bndbox>`` corners), in the folder or an ``Annotations/`` folder, the images beside them or in
  ``JPEGImages/``; ``ImageSets/Main/{train,val,test}.txt`` give the splits when present.
- **YOLO**: an ``images/`` and a ``labels/`` tree (one ``class cx cy w h`` line per box, normalised), the class
  names in ``data.yaml`` (``names``) or a ``classes.txt``; ``images/train``, ``images/val``... give the splits.

Every image becomes a :class:`BoxedImage` (pixel corners ``x1 y1 x2 y2``, class ids); images without boxes
are kept (negatives).  Problems are answered at the door: a missing image, a file with no box at all, or
many bad boxes is one line naming the first offender (:class:`~autotransfer.errors.UserError`); a few bad
boxes among many (outside the image, zero area, an unknown category) are dropped with one warning listing
them.  Splits not given are carved by a seeded split *by image*, so no image's boxes land in two splits.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotransfer.data import SPLIT_NAMES, SPLITS, LabeledSplits, Split, split_missing
from autotransfer.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: a box may overshoot the image by this share of its side (annotation tools round outwards); it is clipped
CLIP_TOLERANCE = 0.02
#: "a few bad boxes among many": at most this share of all boxes (and at most MAX_DROPPED) is dropped with a
#: warning; more is an error naming the first
MAX_DROPPED_SHARE = 0.05
MAX_DROPPED = 20


class BadBoxesWarning(UserWarning):
    """A few boxes were dropped (outside the image, zero area, unknown category)."""


@dataclass(frozen=True)
class BoxedImage:
    """One image and its boxes: pixel corners ``x1 y1 x2 y2`` (float32) and class ids (int64)."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class _Box:
    corners: tuple[float, float, float, float]
    category: Any  # the file's own category id or name
    where: str  # "file: box k" for messages


@dataclass
class _Image:
    path: Path
    width: Optional[int]
    height: Optional[int]
    boxes: list[_Box] = field(default_factory=list)
    where: str = ""
    #: YOLO: corners are fractions of the image's size
    normalised: bool = False


def read_detection_task(settings: Any) -> LabeledSplits:
    """detection's reader (:class:`~autotransfer.tasks.spec.TaskSpec`)."""
    return load_detection_splits(Path(settings.data), val_frac=settings.val_frac, test_frac=settings.test_frac,
                                 seed=settings.seed)


def load_detection_splits(data: Path, *, val_frac: Optional[float] = None, test_frac: float = 0.1,
                          seed: int = 0) -> LabeledSplits:
    """Read ``data`` (any of the three formats), check every box, and split by image.

    The splits' ``inputs`` are :class:`BoxedImage` objects; their ``labels`` hold each image's class ids,
    ``-1``-padded to the most boxes in one image (so class counts and the by-image split work as for tags).
    """
    data = Path(data)
    fmt = detect_format(data)
    raw, categories = {"coco": read_coco_splits, "voc": read_voc, "yolo": read_yolo}[fmt](data)
    names, index = _class_index(categories)
    checked = _check(raw, index, data)
    splits = {name: _as_split(images) for name, images in checked.items()}
    splits = split_missing(splits, val_frac, test_frac, seed, str(data))
    # what predictions call each class: the COCO file's own category ids (so results evaluate against it), else
    # the class index (VOC names its classes; YOLO's ids are the indices)
    ids = [cid for cid, _ in categories] if fmt == "coco" else list(range(len(names)))
    return LabeledSplits(train=splits["train"], validation=splits["validation"], test=splits["test"],
                         label_names=names, source={"format": fmt, "category_ids": ids, "boxes": {
                             s: int((splits[s].labels >= 0).sum()) for s in SPLITS}})


def detect_format(data: Path) -> str:
    """``coco`` (a JSON file, or a folder of split JSON files), ``yolo`` (images/ + labels/), or ``voc`` (XML)."""
    if data.is_file():
        if data.suffix.lower() == ".json":
            return "coco"
        raise UserError(f"--data: {data} is not a COCO JSON file; give a .json file or a VOC / YOLO folder")
    if not data.is_dir():
        raise UserError(f"--data: {data} does not exist")
    if (data / "labels").is_dir() and (data / "images").is_dir():
        return "yolo"
    if any(f.suffix.lower() == ".json" and f.stem.lower() in SPLIT_NAMES["train"] for f in data.iterdir()):
        return "coco"
    if (data / "Annotations").is_dir() or any(data.glob("*.xml")):
        return "voc"
    raise UserError(f"--data: {data} holds no detection annotations (a COCO .json file, a VOC folder of .xml "
                    "files, or a YOLO images/ + labels/ tree)")


# ---------------------------------------------------------------------------------------------------- COCO
def read_coco_splits(data: Path) -> tuple[dict[str, list[_Image]], list[tuple[Any, str]]]:
    """One COCO file (train only), or a folder with ``train.json`` and optionally ``val.json`` / ``test.json``."""
    if data.is_file():
        images, categories = read_coco(data)
        return {"train": images}, categories
    out: dict[str, list[_Image]] = {}
    categories: list[tuple[Any, str]] = []
    for f in sorted(data.glob("*.json")):
        split = next((s for s, stems in SPLIT_NAMES.items() if f.stem.lower() in stems), None)
        if split is None:
            continue
        images, cats = read_coco(f)
        if split == "train":
            categories = cats
        elif categories and cats and cats != categories:
            raise UserError(f"{f}: its categories differ from the train file's; use one category list")
        out[split] = images
    return out, categories


def read_coco(path: Path) -> tuple[list[_Image], list[tuple[Any, str]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable COCO JSON file ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise UserError(f"{path}: a COCO file needs 'images' and 'annotations' lists")
    categories = [(c["id"], str(c.get("name", c["id"]))) for c in doc.get("categories") or []]
    if not categories:
        raise UserError(f"{path}: no 'categories'; a COCO file names its classes there")
    images: dict[Any, _Image] = {}
    for i, im in enumerate(doc["images"]):
        if "id" not in im or "file_name" not in im:
            raise UserError(f"{path}: images[{i}] lacks 'id' or 'file_name'")
        images[im["id"]] = _Image(path.parent / im["file_name"], im.get("width"), im.get("height"),
                                  where=f"{path.name}: image {im['file_name']}")
    for k, ann in enumerate(doc["annotations"]):
        image = images.get(ann.get("image_id"))
        if image is None:
            raise UserError(f"{path}: annotations[{k}] points at image_id {ann.get('image_id')!r}, which no image has")
        if ann.get("iscrowd"):
            continue  # a crowd region, not an object to detect (COCO's own evaluation ignores them too)
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise UserError(f"{path}: annotations[{k}] has no [x, y, width, height] bbox")
        x, y, w, h = (float(v) for v in bbox)
        image.boxes.append(_Box((x, y, x + w, y + h), ann.get("category_id"),
                                f"{path.name}: annotations[{k}] (image {image.path.name}, bbox {bbox})"))
    return list(images.values()), categories


# ----------------------------------------------------------------------------------------------------- VOC
def read_voc(data: Path) -> tuple[dict[str, list[_Image]], list[tuple[Any, str]]]:
    folder = data / "Annotations" if (data / "Annotations").is_dir() else data
    images: dict[str, _Image] = {}
    for xml in sorted(folder.glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise UserError(f"{xml}: not a readable Pascal VOC XML file ({exc})") from None
        name = root.findtext("filename")
        if not name:
            raise UserError(f"{xml}: no <filename>")
        beside = xml.parent / name
        path = beside if beside.exists() or not (data / "JPEGImages").is_dir() else data / "JPEGImages" / name
        size = root.find("size")
        width = int(float(size.findtext("width", "0"))) if size is not None else None
        height = int(float(size.findtext("height", "0"))) if size is not None else None
        image = _Image(path, width or None, height or None, where=f"{xml.name}")
        for k, obj in enumerate(root.findall("object")):
            box = obj.find("bndbox")
            if box is None:
                raise UserError(f"{xml}: object {k} has no <bndbox>")
            try:
                corners = tuple(float(box.findtext(t, "nan")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise UserError(f"{xml}: object {k} has a non-numeric <bndbox>") from None
            # VOC counts pixels from 1: the first pixel's left edge is 0 in the corner convention used here
            x1, y1, x2, y2 = corners
            image.boxes.append(_Box((x1 - 1, y1 - 1, x2, y2), (obj.findtext("name") or "").strip(),
                                    f"{xml.name}: object {k} ({obj.findtext('name')}, {corners})"))
        images[xml.stem] = image
    if not images:
        raise UserError(f"{data}: no Pascal VOC .xml files")
    names = sorted({str(b.category) for im in images.values() for b in im.boxes if b.category})
    sets = data / "ImageSets" / "Main"
    out: dict[str, list[_Image]] = {}
    for split, stems in SPLIT_NAMES.items():
        listed = next((sets / f"{s}.txt" for s in stems if (sets / f"{s}.txt").is_file()), None)
        if listed is not None:
            ids = [line.split()[0] for line in listed.read_text().splitlines() if line.strip()]
            unknown = [i for i in ids if i not in images]
            if unknown:
                raise UserError(f"{listed}: lists {unknown[0]!r}, which has no annotation file")
            out[split] = [images[i] for i in ids]
    if "train" not in out:
        taken = {id(im) for ims in out.values() for im in ims}
        out["train"] = [im for im in images.values() if id(im) not in taken]
    return out, [(n, n) for n in names]


# ---------------------------------------------------------------------------------------------------- YOLO
def read_yolo(data: Path) -> tuple[dict[str, list[_Image]], list[tuple[Any, str]]]:
    names = _yolo_names(data)
    images_root, labels_root = data / "images", data / "labels"
    subsets = {split: next((images_root / s for s in stems if (images_root / s).is_dir()), None)
               for split, stems in SPLIT_NAMES.items()}
    roots = {s: d for s, d in subsets.items() if d is not None} or {"train": images_root}
    out: dict[str, list[_Image]] = {}
    for split, folder in roots.items():
        found = []
        for img in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            label = labels_root / img.relative_to(images_root).with_suffix(".txt")
            image = _Image(img, None, None, where=f"{img.relative_to(data)}", normalised=True)
            if label.is_file():
                for k, line in enumerate(label.read_text().splitlines()):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) < 5:
                        raise UserError(f"{label}: line {k + 1} is not 'class cx cy w h'")
                    try:
                        cls, (cx, cy, w, h) = int(parts[0]), (float(v) for v in parts[1:5])
                    except ValueError:
                        raise UserError(f"{label}: line {k + 1} is not 'class cx cy w h' numbers") from None
                    # normalised: made pixels once the image's size is known (see _check)
                    image.boxes.append(_Box((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), cls,
                                            f"{label.relative_to(data)}: line {k + 1}"))
            found.append(image)
        out[split] = found
    if not any(out.values()):
        raise UserError(f"{images_root}: no images")
    return out, [(i, n) for i, n in enumerate(names)]


def _yolo_names(data: Path) -> list[str]:
    cfg = data / "data.yaml"
    if cfg.is_file():
        import yaml

        try:
            doc = yaml.safe_load(cfg.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{cfg}: malformed YAML ({str(exc).splitlines()[0]})") from None
        names = doc.get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        raise UserError(f"{cfg}: no 'names' (the class names, a list or an id -> name mapping)")
    listed = data / "classes.txt"
    if listed.is_file():
        return [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    raise UserError(f"{data}: a YOLO tree needs its class names in data.yaml ('names') or classes.txt")


# ---------------------------------------------------------------------------------------------------- checks
def _class_index(categories: list[tuple[Any, str]]) -> tuple[list[str], dict[Any, int]]:
    names = [name for _, name in categories]
    if len(set(names)) != len(names):
        raise UserError(f"two categories share a name: {sorted({n for n in names if names.count(n) > 1})}")
    return names, {cid: i for i, (cid, _) in enumerate(categories)}


def _check(raw: dict[str, list[_Image]], index: dict[Any, int], data: Path) -> dict[str, list[BoxedImage]]:
    """Every image exists and has a size; every box is inside it, has area and a known category."""
    from PIL import Image

    total = sum(len(im.boxes) for ims in raw.values() for im in ims)
    if total == 0:
        raise UserError(f"{data}: the annotations hold no boxes at all; a detector needs boxes to learn from")
    bad: list[str] = []
    out: dict[str, list[BoxedImage]] = {}
    for split, images in raw.items():
        checked = []
        for im in images:
            if not im.path.is_file():
                raise UserError(f"{im.where}: the image file {im.path} does not exist")
            if not (im.width and im.height):
                try:
                    with Image.open(im.path) as opened:  # the header only: no decode
                        im.width, im.height = opened.size
                except OSError as exc:
                    raise UserError(f"{im.where}: {im.path} is not a readable image ({exc})") from None
            boxes, labels = [], []
            for b in im.boxes:
                corners = b.corners
                if im.normalised:
                    corners = (corners[0] * im.width, corners[1] * im.height,
                               corners[2] * im.width, corners[3] * im.height)
                problem, fixed = _box_problem(corners, im.width, im.height)  # type: ignore[arg-type]
                if problem is None and b.category not in index:
                    problem = f"unknown category {b.category!r}"
                if problem is not None:
                    bad.append(f"{b.where}: {problem}")
                    continue
                boxes.append(fixed)
                labels.append(index[b.category])
            checked.append(BoxedImage(str(im.path), int(im.width), int(im.height),  # type: ignore[arg-type]
                                      np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                      np.asarray(labels, dtype=np.int64)))
        out[split] = checked
    if bad:
        if len(bad) > min(MAX_DROPPED, int(MAX_DROPPED_SHARE * total)):  # from 20 boxes on, one may be dropped
            raise UserError(f"{len(bad)} of {total} boxes are unusable; the first: {bad[0]}")
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"dropped {len(bad)} of {total} boxes: {shown}", BadBoxesWarning, stacklevel=3)
    if "train" in out and not any(len(im) for im in out["train"]):
        raise UserError(f"{data}: the training split holds no usable box")
    return out


def _box_problem(corners: tuple[float, ...], width: int, height: int) -> tuple[Optional[str], tuple[float, ...]]:
    """(what is wrong, or None; the corners clipped to the image when they overshoot by a rounding margin)."""
    x1, y1, x2, y2 = corners
    if not all(np.isfinite(corners)):
        return "a coordinate is not a number", corners
    if x2 <= x1 or y2 <= y1:
        return "zero or negative area", corners
    tx, ty = CLIP_TOLERANCE * width, CLIP_TOLERANCE * height
    if x1 < -tx or y1 < -ty or x2 > width + tx or y2 > height + ty:
        return f"outside the {width}x{height} image", corners
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return "less than a pixel inside the image", corners
    return None, clipped


def _as_split(images: list[BoxedImage]) -> Split:
    most = max((len(im) for im in images), default=0)
    labels = np.full((len(images), max(1, most)), -1, dtype=np.int64)
    for i, im in enumerate(images):
        labels[i, :len(im)] = im.labels
    return Split(inputs=list(images), labels=labels)
