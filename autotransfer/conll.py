"""Token-tagged sentences (NER) from CoNLL-style files or JSON lines, checked once, tags in IOB2.

Formats, one file or a folder with ``train`` / ``validation`` (``dev``, ``valid``) / ``test`` files:

- **CoNLL**: one token per line, its tag in the *last* column (tab- or space-separated, so
  the 4-column CoNLL-2003 originals read as they are), a blank line between sentences,
  ``-DOCSTART-`` lines ignored;
- **JSON lines**: ``{"tokens": [...], "tags": [...]}`` per sentence.

Tags are ``O``, ``B-TYPE`` or ``I-TYPE``.  IOB1 (where ``I-`` opens an entity and ``B-`` only
separates two adjacent entities of one type) is converted to IOB2 by the standard rule: an
``I-X`` that does not continue an ``X`` entity becomes ``B-X``.  IOB2 input is unchanged by it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from autotransfer.data import LabeledSplits, Split, find_split_files, split_missing
from autotransfer.entities import tag_set
from autotransfer.errors import UserError

CONLL_SUFFIXES = (".tsv", ".txt", ".conll", ".iob", ".bio")
JSONL_SUFFIXES = (".jsonl", ".json")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class TaggedSentences:
    """Sentences of one split: ``tokens[i]`` and ``tags[i]`` (IOB2 strings) have equal lengths."""

    tokens: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    #: 1-based line of each sentence's first token in its file (for error messages)
    lines: list[int] = field(default_factory=list)
    #: ``I-`` tags rewritten to ``B-`` (IOB1 input)
    converted: int = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def entity_types(self) -> set[str]:
        return {t[2:] for sent in self.tags for t in sent if t != "O"}


def to_iob2(tags: list[str]) -> tuple[list[str], int]:
    """IOB1 (or sloppy IOB2) -> IOB2: an ``I-X`` that does not continue an ``X`` entity opens one."""
    out, changed, prev = [], 0, "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag, changed = "B-" + tag[2:], changed + 1
        out.append(tag)
        prev = tag
    return out, changed


def read_conll(path: Path) -> TaggedSentences:
    """A CoNLL-style file; raises :class:`UserError` naming the first bad line."""
    out = TaggedSentences()
    tokens: list[str] = []
    tags: list[str] = []
    start, widths = 0, set()

    def close() -> None:
        if tokens:
            fixed, changed = to_iob2(tags)
            out.tokens.append(list(tokens))
            out.tags.append(fixed)
            out.lines.append(start)
            out.converted += changed
            tokens.clear()
            tags.clear()

    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                close()
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if cols[0] == "-DOCSTART-":
                close()
                continue
            widths.add(min(len(cols), 2))
            if len(widths) > 1:
                raise UserError(f"{path}:{number}: this file mixes lines with a tag column and lines without "
                                "one; each line needs a token and its tag")
            if len(cols) < 2:
                raise UserError(f"{path}:{number}: no tag column (one column: {cols[0][:40]!r}); each line needs "
                                "a token and its tag, tab- or space-separated")
            tag = cols[-1].strip()
            if not _TAG.match(tag):
                raise UserError(f"{path}:{number}: tag {tag[:40]!r} is not BIO (O, B-TYPE or I-TYPE)")
            if not tokens:
                start = number
            tokens.append(cols[0].strip())
            tags.append(tag)
    close()
    return out


def read_jsonl(path: Path) -> TaggedSentences:
    """JSON lines of ``{"tokens": [...], "tags": [...]}``."""
    out = TaggedSentences()
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "tokens" not in row:
                raise UserError(f"{path}:{number}: each line needs a \"tokens\" list")
            if "tags" not in row:
                raise UserError(f"{path}:{number}: no \"tags\" list (the entity tag of each token)")
            toks, tags = row["tokens"], row["tags"]
            if not isinstance(toks, list) or not isinstance(tags, list) or len(toks) != len(tags):
                raise UserError(f"{path}:{number}: \"tokens\" and \"tags\" must be lists of equal length")
            if not toks:
                continue
            bad = next((t for t in tags if not isinstance(t, str) or not _TAG.match(t)), None)
            if bad is not None:
                raise UserError(f"{path}:{number}: tag {str(bad)[:40]!r} is not BIO (O, B-TYPE or I-TYPE)")
            fixed, changed = to_iob2(list(tags))
            out.tokens.append([str(t) for t in toks])
            out.tags.append(fixed)
            out.lines.append(number)
            out.converted += changed
    return out


def read_tagged(path: Path) -> TaggedSentences:
    """One file, by its suffix (CoNLL unless it is ``.jsonl`` / ``.json``)."""
    return read_jsonl(path) if path.suffix.lower() in JSONL_SUFFIXES else read_conll(path)


def read_words(path: Path) -> list[list[str]]:
    """Sentences of new words to tag: JSON lines with a ``tokens`` list, or one word per line (the first
    column; any further columns, such as gold tags, are ignored) with a blank line between sentences."""
    sentences: list[list[str]] = []
    if path.suffix.lower() in JSONL_SUFFIXES:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    tokens = json.loads(line).get("tokens")
                except (json.JSONDecodeError, AttributeError):
                    tokens = None
                if not isinstance(tokens, list):
                    raise UserError(f"{path}:{number}: each line needs a \"tokens\" list")
                if tokens:
                    sentences.append([str(t) for t in tokens])
    else:
        current: list[str] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                cols = line.split("\t") if "\t" in line else line.split()
                if not line.strip() or cols[0] == "-DOCSTART-":
                    if current:
                        sentences.append(current)
                    current = []
                    continue
                current.append(cols[0].strip())
        if current:
            sentences.append(current)
    if not sentences:
        raise UserError(f"{path}: no sentences to tag (one word per line, a blank line between sentences)")
    return sentences


def read_tagged_splits(data: Path) -> tuple[dict[str, TaggedSentences], dict[str, str]]:
    """Every split given (a file is the train split); checks there are sentences and entities.

    Returns the splits and, per split, the file it came from.
    """
    files = (find_split_files(data, CONLL_SUFFIXES + JSONL_SUFFIXES, "train.tsv, train.conll or train.jsonl")
             if data.is_dir() else {"train": data})
    splits = {name: read_tagged(path) for name, path in files.items()}
    for name, sentences in splits.items():
        if not len(sentences):
            raise UserError(f"{files[name]}: no sentences (tokens separated from the next sentence by a blank line)")
    if not any(sentences.entity_types() for sentences in splits.values()):
        raise UserError(f"{data}: no entity tags in any split (every tag is O); there is nothing to learn")
    if not splits["train"].entity_types():
        raise UserError(f"{files['train']}: the training split has no entity tags (every tag is O)")
    return splits, {name: str(path) for name, path in files.items()}


def tag_names(train: TaggedSentences, others: Optional[list[TaggedSentences]] = None) -> list[str]:
    """``O`` then ``B-X``, ``I-X`` for each entity type, sorted; a type seen only outside train is an error."""
    types = sorted(train.entity_types())
    for other in others or []:
        unseen = sorted(other.entity_types() - set(types))
        if unseen:
            raise UserError(f"entity type(s) {', '.join(unseen[:5])} appear outside the training split but never "
                            "in it; add training sentences or drop them")
    return tag_set(types)


def read_token_task(settings: Any) -> LabeledSplits:
    """token-cls's reader (:class:`~autotransfer.tasks.spec.TaskSpec`): one label row per sentence (tag ids,
    -1 past its end), missing splits carved by sentence."""
    data = Path(settings.data)
    tagged, files = read_tagged_splits(data)
    names = tag_names(tagged["train"], [v for k, v in tagged.items() if k != "train"])
    index = {t: i for i, t in enumerate(names)}
    splits = {}
    for name, sentences in tagged.items():
        rows = [[index[t] for t in tags] for tags in sentences.tags]
        labels = np.full((len(rows), max(map(len, rows))), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            labels[i, :len(row)] = row
        splits[name] = Split(inputs=sentences.tokens, labels=labels)
    splits = split_missing(splits, settings.val_frac, settings.test_frac, settings.seed, str(data))
    converted = sum(s.converted for s in tagged.values())
    source = {"files": files, "format": "IOB2" + (f" ({converted} IOB1 tags converted)" if converted else ""),
              "entity_types": sorted({t[2:] for t in names if t != "O"})}
    return LabeledSplits(train=splits["train"], validation=splits["validation"], test=splits["test"],
                         label_names=names, source=source)
