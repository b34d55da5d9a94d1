"""Read labelled text tables (CSV, TSV, JSONL) into :class:`LabeledSplits`.

``--data`` is one file (validation/test are carved out of it) or a folder with
``train``, ``validation``/``valid``/``val``/``dev`` and ``test`` files.  Text and
label columns are detected from common names unless given explicitly.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from autotransfer.data import LabeledSplits, Split, encode_labels, split_missing
from autotransfer.data import find_split_files as find_split_files_with
from autotransfer.errors import UserError

SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".json": None, ".txt": "sniff"}
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "body", "comment",
                "message", "utterance", "tweet", "sentence1", "premise", "question", "text_a", "title")
PAIR_COLUMNS = ("text_pair", "sentence2", "hypothesis", "text_b", "passage", "context")
#: text columns that usually come with a second text column (auto-detected pair)
PAIRED_FIRST = ("sentence1", "premise", "question", "text_a")
#: a text field longer than this is almost always a parsing accident (an unclosed quote)
MAX_FIELD_CHARS = 1_000_000
LABEL_COLUMNS = ("label", "labels", "category", "class", "target", "sentiment", "gold_label", "y")


def text_column(df: pd.DataFrame, name: Optional[str], path: Path) -> str:
    """The column of new texts to predict on: ``name`` if given, else a usual text column name, else the only one."""
    col = _find_column(df, name, TEXT_COLUMNS, "text", "--text-col", path)
    if col is None and len(df.columns) == 1:
        col = df.columns[0]
    if col is None:
        raise UserError(f"{path}: no text column found (columns: {', '.join(df.columns)}); pass --text-col")
    return col


def read_table(path: Path) -> pd.DataFrame:
    """Read one table as strings; errors name the file and what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if b"\x00" in head:
        raise UserError(f"{path}: looks like a binary file, not {suffix} text")
    sep = SUFFIXES[suffix]
    try:
        if sep is None:
            df = pd.read_json(path, lines=True, dtype=False)
            df = df.astype(str).where(df.notna(), "")
        else:
            if sep == "sniff":
                with open(path, encoding="utf-8", newline="") as fh:
                    sep = csv.Sniffer().sniff(fh.read(65536), delimiters=",\t;|").delimiter
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL,
                             encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; re-save the file as UTF-8") from None
    except (pd.errors.ParserError, ValueError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "EOF inside string" in first:
            row = first.rsplit("row", 1)[-1].strip()
            raise UserError(f"{path}: a quote opened at data row {row} is never closed (an unclosed quote?)") from None
        raise UserError(f"{path}: could not parse the table ({first})") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    if len(df) == 0:
        raise UserError(f"{path}: the table has a header but no rows")
    if sep not in (None, "sniff"):
        _check_header(path, head, sep, df)
    df.columns = [str(c).strip() for c in df.columns]
    longest = int(df.astype(str).apply(lambda col: col.str.len()).max().max()) if len(df.columns) else 0
    if longest > MAX_FIELD_CHARS:
        raise UserError(f"{path}: a field of {longest:,} characters; an unclosed quote? (fields over "
                        f"{MAX_FIELD_CHARS:,} characters are refused)")
    return df


def _check_header(path: Path, head: bytes, sep: str, df: pd.DataFrame) -> None:
    first = head.decode("utf-8", errors="replace").splitlines()[0] if head else ""
    names = [c.strip().strip('"') for c in first.split(sep)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: the header names column {dupes[0]!r} twice; rename one")
    if len(df.columns) == 1:
        for other, ext in (("\t", ".tsv"), (",", ".csv"), (";", ".csv with ';'")):
            if other != sep and other in first:
                raise UserError(f"{path}: only one column was found but the header contains {other!r}: "
                                f"the file seems to be delimited differently (save it as {ext})")


def _find_column(df: pd.DataFrame, given: Optional[str], candidates: tuple[str, ...], what: str,
                 flag: str, path: Path) -> Optional[str]:
    cols = list(df.columns)
    if given is not None:
        if given not in cols:
            raise UserError(f"{path}: {flag} {given!r} is not a column (columns: {', '.join(cols)})")
        return given
    lower = {c.lower(): c for c in cols}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def _resolve_columns(df: pd.DataFrame, path: Path, text_col: Optional[str], pair_col: Optional[str],
                     label_col: Optional[str]) -> tuple[str, Optional[str], str]:
    label = _find_column(df, label_col, LABEL_COLUMNS, "label", "--label-col", path)
    if label is None:
        raise UserError(f"{path}: no label column found (columns: {', '.join(df.columns)}); pass --label-col")
    text = _find_column(df, text_col, TEXT_COLUMNS, "text", "--text-col", path)
    if text is None:
        others = [c for c in df.columns if c != label]
        if len(others) == 1:
            text = others[0]
        else:
            raise UserError(f"{path}: no text column found (columns: {', '.join(df.columns)}); pass --text-col")
    if text == label:
        raise UserError(f"{path}: the text and label columns are the same ({text!r})")
    pair = pair_col
    if pair is not None:
        pair = _find_column(df, pair_col, PAIR_COLUMNS, "pair", "--text-pair-col", path)
    elif text.lower() in PAIRED_FIRST:
        pair = _find_column(df, None, PAIR_COLUMNS, "pair", "--text-pair-col", path)
    return text, pair, label


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map split name to a table file in a data folder (``train.csv``, ``dev.tsv``...)."""
    return find_split_files_with(folder, SUFFIXES, "train.csv, train.tsv or train.jsonl")


def load_text_splits(
    data: Path,
    *,
    text_col: Optional[str] = None,
    text_pair_col: Optional[str] = None,
    label_col: Optional[str] = None,
    val_frac: Optional[float] = None,
    test_frac: float = 0.1,
    seed: int = 0,
) -> LabeledSplits:
    """Load a text-classification dataset from a file or a folder of split files."""
    files = find_split_files(data) if data.is_dir() else {"train": data}
    frames = {split: read_table(path) for split, path in files.items()}
    cols = None
    raw_labels: dict[str, list[str]] = {}
    parts: dict[str, tuple[list[str], Optional[list[str]]]] = {}
    for split, df in frames.items():
        text, pair, label = _resolve_columns(df, files[split], text_col, text_pair_col, label_col)
        if cols is None:
            cols = (text, pair, label)
        texts = df[text].astype(str).tolist()
        empty = sum(1 for t in texts if not t.strip())
        if empty == len(texts):
            raise UserError(f"{files[split]}: every value of the text column {text!r} is empty")
        raw_labels[split] = df[label].tolist()
        parts[split] = (texts, df[pair].astype(str).tolist() if pair else None)
    assert cols is not None
    where = str(data)
    labels, names = encode_labels(raw_labels, where)
    splits = {
        split: Split(inputs=parts[split][0], labels=labels[split], pairs=parts[split][1]) for split in frames
    }
    splits = split_missing(splits, val_frac, test_frac, seed, where)
    source = {
        "data": str(data),
        "files": {k: str(v) for k, v in files.items()},
        "columns": {"text": cols[0], "text_pair": cols[1], "label": cols[2]},
        "carved_splits": sorted(set(("validation", "test")) - set(files)),
    }
    return LabeledSplits(splits["train"], splits["validation"], splits["test"], names, source)


def read_text_task(settings: Any) -> LabeledSplits:
    """text-cls's reader (:class:`~autotransfer.tasks.spec.TaskSpec`): its options from ``settings.options``."""
    options = settings.options
    return load_text_splits(settings.data, text_col=options.get("text_col"),
                            text_pair_col=options.get("text_pair_col"), label_col=options.get("label_col"),
                            val_frac=settings.val_frac, test_frac=settings.test_frac, seed=settings.seed)
