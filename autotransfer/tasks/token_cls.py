"""``token-cls``: token classification (named-entity recognition) with Hugging Face transformers backbones.

Data: CoNLL-style files or JSON lines of tagged sentences (:mod:`autotransfer.conll`), tags in
IOB2.  Each sentence is tokenized once per distinct (tokenizer, max length) into sub-token
*windows* (:mod:`autotransfer.token_windows`): the first sub-token of each word carries its tag,
and a sentence longer than the max length is cut into consecutive windows, never truncated.

Training iterates over windows; evaluation over whole sentences (all windows of a sentence in one
batch), so the decoded predictions are one row of tags per sentence and entity-level scores
(:class:`~autotransfer.objective.TokenTagging`) are computed on whole sentences.  Backbones, LoRA
targets, freezing and export are those of ``text-cls`` with a token-classification head.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autotransfer.conll import read_words
from autotransfer.data import SPLITS, LabeledSplits
from autotransfer.errors import UserError
from autotransfer.objective import IGNORE
from autotransfer.recipes import Recipe
from autotransfer.tasks import register_task
from autotransfer.tasks.base import BackboneInfo, Batch, IndexedCollate, PreparationStats
from autotransfer.tasks.text_cls import (TextClassification, length_sorted_batches, pad_rows, quiet_transformers,
                                         window_length)
from autotransfer.token_windows import Windows, tokenize_tagged, word_scores


@dataclass
class WindowSplit:
    """The windows of one split, flattened: window ``w`` is ``ids[offsets[w]:offsets[w+1]]``."""

    ids: np.ndarray  # int32 sub-token ids
    offsets: np.ndarray  # int64, windows + 1
    tags: np.ndarray  # int16, aligned with ids: the word's tag at its first sub-token, IGNORE elsewhere
    word: np.ndarray  # int32, aligned with ids: the word a position predicts, -1 elsewhere
    #: sentence ``s`` is windows ``first[s]:first[s+1]``
    first: np.ndarray  # int64, sentences + 1
    #: gold tag ids, one row per sentence, -1-padded
    gold: np.ndarray

    @property
    def windows(self) -> int:
        return len(self.offsets) - 1

    @property
    def sentences(self) -> int:
        return len(self.first) - 1

    def sentence_lengths(self) -> np.ndarray:
        """Sub-tokens per sentence, over all its windows."""
        return self.offsets[self.first[1:]] - self.offsets[self.first[:-1]]


@dataclass
class WindowData:
    """The prepared data of one (tokenizer, max length): what trials receive."""

    key: str
    max_length: int
    pad_id: int
    splits: dict[str, WindowSplit]


def _pack(windows: Windows, gold: np.ndarray) -> WindowSplit:
    lens = np.fromiter((len(r) for r in windows.input_ids), dtype=np.int64, count=len(windows))
    offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = lambda rows, dtype: np.fromiter((v for r in rows for v in r), dtype=dtype, count=int(offsets[-1]))  # noqa: E731
    sentence = np.asarray(windows.sentence, dtype=np.int64)
    first = np.searchsorted(sentence, np.arange(len(windows.words) + 1)).astype(np.int64)
    return WindowSplit(ids=flat(windows.input_ids, np.int32), offsets=offsets, tags=flat(windows.labels, np.int16),
                       word=flat(([-1 if w is None else w for w in r] for r in windows.predicts), np.int32),
                       first=first, gold=gold)


def word_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    """The backbone's fast tokenizer, set up to read pre-split words (byte-level BPE needs a prefix space)."""
    from transformers import AutoTokenizer

    from autotransfer.backbones import pretrained

    where, extra = pretrained(source)  # a GGUF file: its folder and gguf_file=
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, **extra)
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"backbone {source!r}: token classification needs a fast tokenizer (word ids per "
                        "sub-token); this one is a slow Python tokenizer")
    try:
        tokenizer(["a", "b"], is_split_into_words=True)
    except Exception:  # noqa: BLE001 - e.g. RoBERTa/GPT-2: "add_prefix_space=True" is needed with pretokenized input
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, add_prefix_space=True,
                                                  **extra)
    return tokenizer


class _WindowCollate:
    """Windows padded to the batch's longest, with their tags; evaluation batches also say where each
    position's word is, so whole sentences can be decoded."""

    def __init__(self, data: WindowData, split: str, sentences: bool):
        self.pad, self.split, self.sentences = data.pad_id, data.splits[split], sentences

    def __call__(self, idx: list[int]) -> Batch:
        s = self.split
        if self.sentences:  # idx are sentences: all their windows, and which batch row each belongs to
            spans = [(s.first[i], s.first[i + 1]) for i in idx]
            windows = np.concatenate([np.arange(a, b) for a, b in spans])
            row = np.repeat(np.arange(len(idx)), [b - a for a, b in spans])
        else:
            windows, row = np.asarray(idx, dtype=np.int64), None
        starts, ends = s.offsets[windows], s.offsets[windows + 1]
        ids, mask = pad_rows(s.ids, starts, ends, self.pad)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
        labels: dict[str, Any] = {"tags": torch.from_numpy(pad_rows(s.tags, starts, ends, IGNORE)[0])}
        if row is not None:
            labels.update(word=torch.from_numpy(pad_rows(s.word, starts, ends, -1)[0]), row=torch.from_numpy(row),
                          width=s.gold.shape[1])
        return inputs, labels


@register_task
class TokenClassification(TextClassification):
    name = "token-cls"
    auto_model = "AutoModelForTokenClassification"

    def classifier_input(self, captured: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return captured  # every position is scored: the objective keeps the tagged ones

    def ranking_module(self, model: nn.Module) -> Optional[nn.Module]:
        return None  # the classifier already reads each token's own state: the pre-rank scores those rows

    # ------------------------------------------------------------------ data
    def describe_backbone(self, name: str, settings: Any) -> BackboneInfo:
        info = super().describe_backbone(name, settings)
        word_tokenizer(info.source, bool(getattr(settings, "trust_remote_code", False)))  # refuses slow tokenizers
        return info

    # ---------------------------------------------------------- preparation
    def prepare(self, backbones: list[BackboneInfo], splits: LabeledSplits,
                settings: Any) -> tuple[dict[str, Any], PreparationStats]:
        """Windows of every split, once per distinct (tokenizer, max length)."""
        quiet_transformers()
        stats = PreparationStats()
        start = time.perf_counter()
        cache: dict[tuple[str, int], WindowData] = {}
        #: the training split at the model's limit, per (tokenizer, limit): its lengths set the max length
        at_cap: dict[tuple[str, int], Windows] = {}
        out: dict[str, Any] = {}
        for bb in backbones:
            tokenizer = word_tokenizer(bb.source, bool(getattr(settings, "trust_remote_code", False)))
            cap = int(bb.details.get("max_length", 512))
            encode = lambda split, length: tokenize_tagged(  # noqa: E731
                tokenizer, split.inputs, [row[row >= 0] for row in split.labels], length)
            if (bb.preprocessing, cap) not in at_cap:  # (nearly) one window per sentence
                at_cap[bb.preprocessing, cap] = encode(splits.train, cap)
            whole = at_cap[bb.preprocessing, cap]
            lengths = np.fromiter((len(r) for r in whole.input_ids), dtype=np.int64)
            max_len = window_length(settings.max_length, cap, lengths)
            key = (bb.preprocessing, max_len)
            if key not in cache:
                packed = {name: _pack(whole if name == "train" and max_len == cap else encode(splits.split(name), max_len),
                                      splits.split(name).labels) for name in SPLITS}
                stats.runs += 1
                pad = tokenizer.pad_token_id
                cache[key] = WindowData(key=f"{bb.preprocessing}-{max_len}", max_length=max_len,
                                        pad_id=int(pad if pad is not None else 0), splits=packed)
            out[bb.name] = cache[key]
        stats.distinct = len(cache)
        stats.seconds = time.perf_counter() - start
        return out, stats

    def recipes(self) -> list[Recipe]:
        """The Hugging Face token-classification tutorial: full fine-tuning at lr 2e-5, weight decay 0.01,
        batch 16 -- for its epochs, or the search's step floor on small data."""
        return [Recipe("full fine-tuning, lr 2e-5", "full",
                       {"lr": 2e-5, "head_lr": 2e-5, "layer_decay": 1.0, "weight_decay": 0.01, "warmup_ratio": 0.0,
                        "batch_size": 16})]

    # ---------------------------------------------------------------- batches
    def batches(self, prepared: WindowData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None) -> Iterable[Batch]:
        data = prepared.splits[split]
        if train:  # windows, shuffled
            return self._windows(prepared, split, batch_size, seed, pin_memory,
                                 _WindowCollate(prepared, split, sentences=False))
        # evaluation: whole sentences of similar length together (a batch may hold a few more windows)
        return DataLoader(range(data.sentences), batch_sampler=length_sorted_batches(data.sentence_lengths(),
                                                                                      batch_size),
                          collate_fn=_WindowCollate(prepared, split, sentences=True), pin_memory=pin_memory)

    def indexed_batches(self, prepared: WindowData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                        pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None,
                        ) -> Optional[Iterable[tuple[Batch, np.ndarray]]]:
        """Training windows with their positions (evaluation batches are sentences: None)."""
        if not train:
            return None
        return self._windows(prepared, split, batch_size, seed, pin_memory,
                             IndexedCollate(_WindowCollate(prepared, split, sentences=False)))

    @staticmethod
    def _windows(prepared: WindowData, split: str, batch_size: int, seed: int, pin_memory: bool,
                 collate: Any) -> DataLoader:
        """Training windows, shuffled (seeded)."""
        return DataLoader(range(prepared.splits[split].windows), batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed), collate_fn=collate, pin_memory=pin_memory)

    def num_examples(self, prepared: WindowData, split: str) -> int:
        """Training: the windows an epoch iterates over; otherwise the sentences that are scored."""
        data = prepared.splits[split]
        return data.windows if split == "train" else data.sentences

    def with_train(self, prepared: WindowData, splits: tuple[str, ...]) -> WindowData:
        parts = [prepared.splits[name] for name in splits]
        offsets, first = [parts[0].offsets], [parts[0].first]
        for part in parts[1:]:
            offsets.append(part.offsets[1:] + offsets[-1][-1])
            first.append(part.first[1:] + first[-1][-1])
        width = max(p.gold.shape[1] for p in parts)
        gold = np.concatenate([np.pad(p.gold, ((0, 0), (0, width - p.gold.shape[1])), constant_values=-1)
                               for p in parts])
        merged = WindowSplit(ids=np.concatenate([p.ids for p in parts]), offsets=np.concatenate(offsets),
                             tags=np.concatenate([p.tags for p in parts]), word=np.concatenate([p.word for p in parts]),
                             first=np.concatenate(first), gold=gold)
        return dataclasses.replace(prepared, splits={**prepared.splits, "train": merged})

    def labels(self, prepared: WindowData, split: str) -> np.ndarray:
        return prepared.splits[split].gold

    # ----------------------------------------------------------------- export
    def export(self, model: torch.nn.Module, backbone: BackboneInfo, label_names: list[str], out: Path) -> None:
        model.save_pretrained(out, safe_serialization=True)
        word_tokenizer(backbone.source).save_pretrained(out)

    def predict(self, model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """One row per sentence with the entities found (type, text, start, end, score).

        Words one per line (CoNLL; a tag column, if any, is ignored) or ``{"tokens": [...]}`` lines: the
        tag of every word too, and ``start``/``end`` are word positions (end exclusive).  A table with a
        text column: the ``token-classification`` pipeline (``aggregation_strategy="first"``), and
        ``start``/``end`` are character offsets in the text."""
        quiet_transformers()
        if _is_table(data, settings.get("text_col")):
            yield from self._predict_texts(model_dir, data, settings)
            return
        from transformers import AutoModelForTokenClassification

        from autotransfer.entities import spans

        sentences = read_words(data)
        tokenizer = word_tokenizer(str(model_dir))
        model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
        names = model.config.id2label
        limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                    int(getattr(model.config, "max_position_embeddings", 512) or 512))
        windows = tokenize_tagged(tokenizer, sentences, None, limit)
        bs = int(settings.get("batch_size", 32))
        probs = []
        with torch.inference_mode():
            for at in range(0, len(windows), bs):
                starts = np.cumsum([0] + [len(r) for r in windows.input_ids[at:at + bs]])
                flat = np.concatenate(windows.input_ids[at:at + bs])
                ids, mask = pad_rows(flat, starts[:-1], starts[1:], tokenizer.pad_token_id or 0)
                logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
                probs.extend(logits.logits.float().softmax(-1).numpy())
        for s, (tokens, scores) in enumerate(zip(sentences, word_scores(windows, probs))):
            tags = [names[int(i)] for i in scores.argmax(-1)]
            best = scores.max(-1)
            entities = [{"type": kind, "text": " ".join(tokens[a:b]), "start": a, "end": b,
                         "score": round(float(best[a:b].mean()), 4)} for kind, a, b in spans(tags)]
            yield {"sentence": s, "text": " ".join(tokens), "tags": " ".join(tags),
                   "entities": json.dumps(entities, ensure_ascii=False)}

    @staticmethod
    def _predict_texts(model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        from transformers import pipeline

        from autotransfer.tables import read_table, text_column

        df = read_table(data)
        col = text_column(df, settings.get("text_col"), data)
        tagger = pipeline("token-classification", model=str(model_dir), tokenizer=str(model_dir),
                          aggregation_strategy="first", device=-1)
        texts = df[col].astype(str).tolist()
        found_all = tagger(texts, batch_size=int(settings.get("batch_size", 32)))
        for row, text, found in zip(df.to_dict(orient="records"), texts, found_all):
            # the text as written (the pipeline's "word" is the tokenizer's, e.g. lowercased)
            entities = [{"type": e["entity_group"], "text": text[int(e["start"]):int(e["end"])], "start": int(e["start"]),
                         "end": int(e["end"]), "score": round(float(e["score"]), 4)} for e in found]
            yield {**row, "entities": json.dumps(entities, ensure_ascii=False)}


def _is_table(data: Path, text_col: Optional[str]) -> bool:
    """A table with a header naming a text column (or ``--text-col``), rather than words one per line."""
    from autotransfer.tables import TEXT_COLUMNS

    suffix = data.suffix.lower()
    if suffix == ".csv":
        return True
    if suffix not in (".tsv", ".jsonl", ".json"):
        return False
    with open(data, encoding="utf-8", errors="replace") as fh:
        head = next((line for line in fh if line.strip()), "")
    if suffix in (".jsonl", ".json"):
        try:
            keys = set(json.loads(head))
        except (json.JSONDecodeError, TypeError):
            return False
        return "tokens" not in keys
    fields = {f.strip().lower() for f in head.rstrip("\n").split("\t")}
    return (text_col or "").lower() in fields or bool(fields & set(TEXT_COLUMNS))
