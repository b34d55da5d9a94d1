"""Detection data: the same boxes read from COCO, Pascal VOC and YOLO; bad input answered in one line; a few bad
boxes dropped with a warning; splits carved by image."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotransfer.detection_data import BadBoxesWarning, detect_format, load_detection_splits
from autotransfer.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["stop", "yield"]
#: image name -> (width, height, [(x1, y1, x2, y2, class index)]); the last image is a negative (no box)
TRUTH = {f"scene{i}.png": (80 + 8 * (i % 3), 60, [(4.0 + i, 6.0, 30.0 + i, 28.0, i % 2)] + (
    [(40.0, 10.0, 60.0, 50.0, 1 - i % 2)] if i % 4 == 0 else [])) for i in range(11)}
TRUTH["empty.png"] = (64, 48, [])


def _images(folder: Path, truth=TRUTH) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h, _) in truth.items():
        Image.new("RGB", (w, h), (90, 120, 150)).save(folder / name)


def write_coco(root: Path, truth=TRUTH, categories=None) -> Path:
    _images(root / "img", truth)
    images, annotations = [], []
    for i, (name, (w, h, boxes)) in enumerate(truth.items()):
        images.append({"id": i, "file_name": f"img/{name}", "width": w, "height": h})
        for x1, y1, x2, y2, c in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c + 1, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    cats = categories or [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def write_voc(root: Path) -> Path:
    _images(root / "JPEGImages")
    (root / "Annotations").mkdir(parents=True)
    for name, (w, h, boxes) in TRUTH.items():
        objects = "".join(
            f"<object><name>{CLASSES[c]}</name><bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin>"
            f"<xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>" for x1, y1, x2, y2, c in boxes)
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    return root


def write_yolo(root: Path) -> Path:
    _images(root / "images")
    (root / "labels").mkdir(parents=True)
    for name, (w, h, boxes) in TRUTH.items():
        lines = [f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"
                 for x1, y1, x2, y2, c in boxes]
        (root / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text("names: [stop, yield]\n")
    return root


def _all(splits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {Path(im.path).name: (im.boxes, im.labels)
            for s in (splits.train, splits.validation, splits.test) for im in s.inputs}


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_each_format_reads_the_same_boxes(fmt, tmp_path):
    data = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}[fmt](tmp_path / fmt)
    assert detect_format(data) == fmt
    splits = load_detection_splits(data, seed=0)
    assert splits.label_names == CLASSES
    # what predictions will call the classes: COCO's own ids (results evaluate against the file), else the index
    assert splits.source["category_ids"] == ([1, 2] if fmt == "coco" else [0, 1])
    found = _all(splits)
    assert set(found) == set(TRUTH)  # every image, the negative included
    for name, (_, _, boxes) in TRUTH.items():
        got_boxes, got_labels = found[name]
        want = np.asarray([b[:4] for b in boxes], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_allclose(got_boxes, want, atol=1e-4)
        assert got_labels.tolist() == [b[4] for b in boxes]


def test_splits_are_carved_by_image_with_the_seed(tmp_path):
    data = write_coco(tmp_path)
    a = load_detection_splits(data, val_frac=0.25, test_frac=0.25, seed=3)
    b = load_detection_splits(data, val_frac=0.25, test_frac=0.25, seed=3)
    names = [{Path(im.path).name for im in s.inputs} for s in (a.train, a.validation, a.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # no image in two splits
    assert sum(map(len, names)) == len(TRUTH) and len(names[1]) == 3 and len(names[2]) == 3
    assert names == [{Path(im.path).name for im in s.inputs} for s in (b.train, b.validation, b.test)]
    summary = a.summary()
    assert sum(summary["boxes"].values()) == sum(len(v[2]) for v in TRUTH.values())
    assert sum(c for s in summary["splits"].values() for c in s["class_counts"].values()) == sum(summary["boxes"].values())


def _with(box_edit):
    truth = {k: (w, h, list(b)) for k, (w, h, b) in TRUTH.items()}
    box_edit(truth)
    return truth


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t["scene1.png"][2].__setitem__(0, (4.0, 6.0, 4.0, 28.0, 0)), "zero or negative area"),
    (lambda t: t["scene1.png"][2].__setitem__(0, (70.0, 6.0, 130.0, 28.0, 0)), "outside the 88x60 image"),
    (lambda t: t["scene1.png"][2].__setitem__(0, (4.0, 6.0, 30.0, 28.0, 7)), "unknown category 8"),
])
def test_a_bad_box_among_few_is_named_in_one_line(edit, needle, tmp_path):
    data = write_coco(tmp_path, _with(edit))
    with pytest.raises(UserError, match=needle) as info:
        load_detection_splits(data)
    assert "1 of 14 boxes are unusable; the first: annotations.json: annotations[2] (image scene1.png" in str(info.value)


def test_a_few_bad_boxes_among_many_are_dropped_with_one_warning(tmp_path):
    many = {f"s{i}.png": (80, 60, [(4.0, 6.0, 30.0, 28.0, i % 2)]) for i in range(40)}
    many["s5.png"] = (80, 60, [(4.0, 6.0, 4.0, 28.0, 1)])  # one box of 40: zero width
    many["s6.png"] = (80, 60, [(-1.0, 6.0, 81.0, 28.0, 0)])  # a rounding overshoot: clipped, kept
    with pytest.warns(BadBoxesWarning, match=r"dropped 1 of 40 boxes: .*annotations\[5\].*zero or negative area"):
        splits = load_detection_splits(write_coco(tmp_path, many))
    found = _all(splits)
    assert len(found) == 40 and len(found["s5.png"][0]) == 0  # the image stays, as a negative
    np.testing.assert_allclose(found["s6.png"][0], [[0.0, 6.0, 80.0, 28.0]])


def test_input_that_cannot_be_used_is_refused(tmp_path):
    data = write_coco(tmp_path / "missing")
    (tmp_path / "missing" / "img" / "scene3.png").unlink()
    with pytest.raises(UserError, match="scene3.png does not exist"):
        load_detection_splits(data)
    empty = write_coco(tmp_path / "empty", {k: (w, h, []) for k, (w, h, _) in TRUTH.items()})
    with pytest.raises(UserError, match="hold no boxes at all"):
        load_detection_splits(empty)
    with pytest.raises(UserError, match="holds no detection annotations"):
        detect_format(tmp_path / "missing" / "img")
    yolo = write_yolo(tmp_path / "yolo")
    (yolo / "data.yaml").unlink()
    with pytest.raises(UserError, match="data.yaml .* or classes.txt"):
        load_detection_splits(yolo)


def test_the_shipped_detection_example_reads_without_a_bad_box(recwarn):
    """examples/signs-mini (the README's detection example) is COCO that the reader takes whole: every image
    present, every box inside its image, the negatives kept, the four GTSDB groups, split by image."""
    coco = REPO / "examples" / "signs-mini" / "coco.json"
    splits = load_detection_splits(coco, seed=0)
    assert not [w for w in recwarn if issubclass(w.category, BadBoxesWarning)]
    assert splits.label_names == ["prohibitory", "danger", "mandatory", "other"]
    images = [im for name in ("train", "validation", "test") for im in splits.split(name).inputs]
    raw = json.loads(coco.read_text())
    assert len(images) == len(raw["images"]) == 64
    assert sum(int((splits.split(n).labels >= 0).sum()) for n in ("train", "validation", "test")) \
        == len(raw["annotations"])
    assert sum(1 for n in ("train", "validation", "test") for row in splits.split(n).labels if (row < 0).all()) == 12
