"""Words with tags -> sub-token windows a model reads, and the model's sub-token scores -> scores per word.

Words are tokenized with ``is_split_into_words``; the first sub-token of each word carries
its tag and every other position is ignored by the loss (``-100``, PyTorch's
``ignore_index``).  A sentence longer than ``max_length`` is cut into consecutive windows
(the fast tokenizer's overflow), never truncated: each word is labelled, and later predicted,
exactly once, at its first sub-token, wherever the window boundary falls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from autotransfer.objective import IGNORE


@dataclass
class Windows:
    """Model inputs of a split: one row per window, and where each window's tokens came from."""

    input_ids: list[list[int]] = field(default_factory=list)
    attention_mask: list[list[int]] = field(default_factory=list)
    token_type_ids: Optional[list[list[int]]] = None
    #: per window: the tag id at each word's first sub-token, IGNORE elsewhere (empty lists when untagged)
    labels: list[list[int]] = field(default_factory=list)
    #: per window: the sentence it belongs to
    sentence: list[int] = field(default_factory=list)
    #: per window and position: the word index that position predicts, or None
    predicts: list[list[Optional[int]]] = field(default_factory=list)
    #: words per sentence
    words: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_tagged(tokenizer: Any, sentences: Sequence[Sequence[str]], tags: Optional[Sequence[Sequence[int]]],
                    max_length: int) -> Windows:
    """Windows of at most ``max_length`` sub-tokens (special tokens included) for tagged (or new) sentences."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token classification needs a fast tokenizer (word ids per sub-token)")
    try:
        return _windows(tokenizer, sentences, tags, max_length)
    except _Dropped as dropped:  # e.g. a lone control character: read it as the unknown token, keep its tag
        unk = getattr(tokenizer, "unk_token", None) or "?"
        fixed = [list(s) for s in sentences]
        for sent, word in dropped.words:
            fixed[sent][word] = unk
        return _windows(tokenizer, fixed, tags, max_length)


class _Dropped(ValueError):
    def __init__(self, words: list[tuple[int, int]]):
        super().__init__(f"{len(words)} word(s) produce no sub-token")
        self.words = words


def _windows(tokenizer: Any, sentences: Sequence[Sequence[str]], tags: Optional[Sequence[Sequence[int]]],
             max_length: int) -> Windows:
    enc = tokenizer([list(s) for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length,
                    return_overflowing_tokens=True, stride=0)
    out = Windows(input_ids=list(enc["input_ids"]), attention_mask=list(enc["attention_mask"]),
                  token_type_ids=list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
                  words=[len(s) for s in sentences])
    seen: dict[int, set[int]] = {}
    for w, sent in enumerate(enc["overflow_to_sample_mapping"]):
        done = seen.setdefault(sent, set())
        predicts: list[Optional[int]] = []
        for word in enc.word_ids(w):
            if word is None or word in done:
                predicts.append(None)
            else:
                predicts.append(word)
                done.add(word)
        out.sentence.append(int(sent))
        out.predicts.append(predicts)
        out.labels.append([] if tags is None else
                          [IGNORE if word is None else int(tags[sent][word]) for word in predicts])
    dropped = [(i, w) for i, n in enumerate(out.words) for w in range(n) if w not in seen.get(i, ())]
    if dropped:  # a word the tokenizer dropped entirely
        raise _Dropped(dropped)
    return out


def word_scores(windows: Windows, scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per sentence, a ``(words, tags)`` array: each word's scores read at its first sub-token (``scores[w]``:
    window ``w``'s ``(positions, tags)`` scores, padding allowed past the window's length)."""
    tags = np.asarray(scores[0]).shape[-1] if len(scores) else 0
    out = [np.zeros((n, tags), dtype=np.float32) for n in windows.words]
    for w, predicts in enumerate(windows.predicts):
        window = np.asarray(scores[w])
        for pos, word in enumerate(predicts):
            if word is not None:
                out[windows.sentence[w]][word] = window[pos]
    return out
