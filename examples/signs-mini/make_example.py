"""How examples/signs-mini was made from ../shared/data/gtsdb (kept so it can be made again; not run by tests).

    python examples/signs-mini/make_example.py ../shared/data/gtsdb examples/signs-mini

Takes a seeded, class-balanced choice of GTSDB road scenes (816x480), cuts from each a 320x320 window at a random
offset that holds all of its signs (whole: a scene whose signs do not fit in one window is skipped), and from
scenes without signs a window at random: the signs keep their size in pixels, the images are a quarter of the
area, so a CPU search over them takes minutes.  Writes ``images/*.jpg`` and ``coco.json`` (COCO, the 4 groups).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

SIDE = 320
PER_CLASS = 13  # scenes whose first sign is of each group
NEGATIVES = 12
SEED = 0


def span(anns: list[dict]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the smallest rectangle holding every box of a scene."""
    return (min(a["bbox"][0] for a in anns), min(a["bbox"][1] for a in anns),
            max(a["bbox"][0] + a["bbox"][2] for a in anns), max(a["bbox"][1] + a["bbox"][3] for a in anns))


def main(src: Path, out: Path) -> None:
    coco = json.loads((src / "coco_4class.json").read_text())
    boxes = defaultdict(list)
    for a in coco["annotations"]:
        boxes[a["image_id"]].append(a)
    rng = random.Random(SEED)
    images = coco["images"][:]
    rng.shuffle(images)
    chosen, per_class, negatives = [], defaultdict(int), 0
    for im in images:
        anns = boxes.get(im["id"], [])
        if not anns:
            if negatives < NEGATIVES:
                negatives += 1
                chosen.append((im, anns))
            continue
        x0, y0, x1, y1 = span(anns)
        group = anns[0]["category_id"]
        if x1 - x0 <= SIDE - 8 and y1 - y0 <= SIDE - 8 and per_class[group] < PER_CLASS:
            per_class[group] += 1
            chosen.append((im, anns))
    (out / "images").mkdir(parents=True, exist_ok=True)
    new_images, new_anns = [], []
    for k, (im, anns) in enumerate(sorted(chosen, key=lambda c: c[0]["id"])):
        w, h = im["width"], im["height"]
        if anns:
            x0, y0, x1, y1 = span(anns)
            left = rng.uniform(max(0.0, x1 - SIDE + 4), min(x0 - 4, w - SIDE))
            top = rng.uniform(max(0.0, y1 - SIDE + 4), min(y0 - 4, h - SIDE))
        else:
            left, top = rng.uniform(0, w - SIDE), rng.uniform(0, h - SIDE)
        left, top = int(left), int(top)
        name = f"images/{im['id']:05d}.jpg"
        with Image.open(src / im["file_name"]) as scene:
            scene.convert("RGB").crop((left, top, left + SIDE, top + SIDE)).save(out / name, quality=85)
        new_images.append({"id": k, "file_name": name, "width": SIDE, "height": SIDE})
        for a in anns:
            x, y, bw, bh = a["bbox"]
            new_anns.append({"id": len(new_anns) + 1, "image_id": k, "category_id": a["category_id"],
                             "bbox": [round(x - left, 1), round(y - top, 1), bw, bh], "area": a["area"],
                             "iscrowd": 0})
    info = {"description": "signs-mini: 320x320 windows of GTSDB road scenes (Houben et al., IJCNN 2013)",
            "made_by": "examples/signs-mini/make_example.py", "seed": SEED}
    (out / "coco.json").write_text(json.dumps({"info": info, "images": new_images, "annotations": new_anns,
                                               "categories": coco["categories"]}, indent=1) + "\n")
    print(f"{len(new_images)} images ({negatives} without signs), {len(new_anns)} boxes, "
          f"first-sign groups {dict(sorted(per_class.items()))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
