"""Labelled splits shared by every task, and the seeded stratified split.

Tasks read their own raw formats (tables of text, folders of images) and hand
back a :class:`LabeledSplits`: train/validation/test inputs with integer
labels and the label names, validated once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import numpy as np

from autotransfer.errors import UserError

SPLITS = ("train", "validation", "test")
#: file (or folder) stems that name each split in a data folder
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
#: without --val-frac, a carved validation split holds at least this many examples...
MIN_VALIDATION_ROWS = 300
#: ...but never more than this share of the data (nor less than DEFAULT_VAL_FRAC)
MAX_AUTO_VAL_FRAC = 0.25
DEFAULT_VAL_FRAC = 0.1


def auto_val_frac(total: int) -> float:
    """The validation share carved from ``total`` rows when the user gave none.

    A model is chosen on its validation score, so the split must be large enough to tell
    trials apart: 300 examples put the 95% interval of an 80% accuracy at about +-4.5
    points (120 examples: +-7).  Small data sets therefore give up to a quarter of their rows
    to validation instead of a tenth; from 3,000 rows on the usual tenth already holds 300.
    """
    if total <= 0:
        return DEFAULT_VAL_FRAC
    return min(MAX_AUTO_VAL_FRAC, max(DEFAULT_VAL_FRAC, MIN_VALIDATION_ROWS / total))


def find_split_files(folder: Path, suffixes: Collection[str], expected: str) -> dict[str, Path]:
    """Map split name to file in a data folder (``train.csv``, ``dev.tsv``...), for files with ``suffixes``.

    ``expected`` names example train files for the error when there is none.
    """
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.suffix.lower() not in suffixes:
            continue
        stem = f.stem.lower()
        for split, names in SPLIT_NAMES.items():
            if stem in names:
                if split in found:
                    raise UserError(f"{folder}: two {split} files ({found[split].name}, {f.name}); keep one")
                found[split] = f
    if "train" not in found:
        raise UserError(f"{folder}: no train file (expected {expected})")
    return found


@dataclass
class Split:
    """One split: model inputs (texts, image paths, word lists...) and integer labels.

    ``labels`` holds one class id per example, or a row of ids per example (a tag per word,
    ``-1``-padded to the longest row).
    """

    inputs: list[Any]
    labels: np.ndarray
    #: second text of a sentence pair (NLI, paraphrase), aligned with ``inputs``
    pairs: Optional[list[Any]] = None

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, idx: Sequence[int]) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(
            inputs=[self.inputs[i] for i in idx],
            labels=self.labels[idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
        )


@dataclass
class LabeledSplits:
    """Train, validation and test splits with the label names (index = class id)."""

    train: Split
    validation: Split
    test: Split
    label_names: list[str]
    #: where the data came from and how it was read, for the report
    source: dict[str, Any]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def split(self, name: str) -> Split:
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """Rows per split and class balance, JSON-friendly."""
        out: dict[str, Any] = {"label_names": list(self.label_names), "splits": {}}
        for name in SPLITS:
            s = self.split(name)
            counts = np.bincount(s.labels[s.labels >= 0].ravel(), minlength=self.num_labels)  # tags: -1 pads
            out["splits"][name] = {
                "rows": len(s),
                "class_counts": {self.label_names[i]: int(c) for i, c in enumerate(counts)},
            }
        out.update(self.source)
        return out


def encode_labels(
    raw: dict[str, list[str]], where: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map raw label strings per split to ids; label order is numeric if all labels are ints.

    Raises :class:`UserError` for blank labels, a single class, or labels seen only
    outside the training split.
    """
    for split, labels in raw.items():
        blanks = sum(1 for v in labels if v is None or str(v).strip() == "")
        if blanks:
            raise UserError(f"{where}: {blanks} row(s) of the {split} split have a blank label; fill or drop them")
    train_names = sorted({str(v).strip() for v in raw["train"]}, key=_label_sort_key)
    if len(train_names) < 2:
        only = train_names[0] if train_names else "none"
        raise UserError(f"{where}: the training data has a single class ({only!r}); a classifier needs at least two")
    index = {name: i for i, name in enumerate(train_names)}
    out = {}
    for split, labels in raw.items():
        values = [str(v).strip() for v in labels]
        unknown = sorted(set(values) - set(index), key=_label_sort_key)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise UserError(
                f"{where}: label(s) {shown} appear in the {split} split but never in train; "
                "add training examples or drop those rows"
            )
        out[split] = np.asarray([index[v] for v in values], dtype=np.int64)
    return out, train_names


def _label_sort_key(value: str) -> tuple[int, Any]:
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)


def split_missing(
    splits: dict[str, Split], val_frac: Optional[float], test_frac: float, seed: int, where: str
) -> dict[str, Split]:
    """Carve missing validation/test splits out of train with a seeded (stratified, for classes) split.

    ``val_frac`` None: :func:`auto_val_frac` of the rows.
    """
    out = dict(splits)
    total = len(out["train"])  # fractions are of the whole file, not of what is left
    if val_frac is None:
        val_frac = auto_val_frac(total)
    for name, frac in (("test", test_frac), ("validation", val_frac)):
        if name in out:
            continue
        train = out["train"]
        if frac <= 0:
            raise UserError(f"{where}: no {name} split was given and --{'val' if name == 'validation' else 'test'}-frac is 0")
        n_hold = max(1, int(round(frac * total)))
        # one class per example: stratified; a label per word: a plain seeded split (nothing to stratify on)
        stratify = train.labels if train.labels.ndim == 1 else None
        if stratify is not None:
            counts = np.bincount(stratify)
            if counts[counts > 0].min() < 2:
                rare = int(np.flatnonzero((counts > 0) & (counts < 2))[0])
                raise UserError(
                    f"{where}: class id {rare} has a single example, so a stratified {name} split is impossible; "
                    f"add examples or provide a {name} file"
                )
            n_hold = max(n_hold, len(np.flatnonzero(counts)))
        if n_hold >= len(train):
            raise UserError(f"{where}: too few rows ({len(train)}) to carve out a {name} split")
        from sklearn.model_selection import train_test_split  # scipy: seconds, so only once the checks passed

        keep, hold = train_test_split(np.arange(len(train)), test_size=n_hold, stratify=stratify, random_state=seed)
        out["train"] = train.take(np.sort(keep))
        out[name] = train.take(np.sort(hold))
    return out
