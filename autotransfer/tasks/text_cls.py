"""``text-cls``: sequence classification with Hugging Face transformers backbones.

Text is tokenized once per distinct (tokenizer, max length) before the search and
stored as flat int32 arrays; every trial of every backbone sharing that tokenizer
reads the same arrays (through Ray's object store) and pads each batch only to
its own longest sequence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autotransfer.backbones import (HubUnavailable, blocks_by_list, find_block_list, gguf_summary, is_gguf, layout,
                                    linear_leaf_names, local_folder, offline_hint, pretrained)
from autotransfer.data import SPLITS, LabeledSplits, Split
from autotransfer.errors import UserError
from autotransfer.recipes import Recipe
from autotransfer.space import TRAINING_DEFAULTS
from autotransfer.strategies.base import ModelBundle
from autotransfer.tasks import register_task
from autotransfer.tasks.base import BackboneInfo, Batch, IndexedCollate, PreparationStats, Task

#: the max length covers this percentile of the training texts' token counts
LENGTH_PERCENTILE = 99.0


def _dequantized_gguf() -> Any:
    """transformers' GGUF loading told to unpack every weight into a dense float model (not to keep GGUF blocks
    for its matmul kernels, which it does when the ``kernels`` package is installed); None where transformers
    has no such option (it then always dequantises)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=True)


def quiet_transformers() -> None:
    """Silence load reports and progress bars; errors still surface as exceptions."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Token indices sequence length.*")


@dataclass
class TokenizedSplit:
    """Token ids of one split, flattened: row ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len = rows + 1
    type_ids: Optional[np.ndarray]  # int8, aligned with ids, for sentence pairs
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class TokenizedData:
    """The prepared data of one (tokenizer, max length): what trials receive."""

    key: str
    max_length: int
    pad_id: int
    input_names: tuple[str, ...]
    splits: dict[str, TokenizedSplit]


class _Collate:
    """Pads the rows of a batch of indices to the batch's longest row."""

    def __init__(self, data: TokenizedData, split: str):
        self.data, self.split = data, data.splits[split]

    def __call__(self, idx: list[int]) -> Batch:
        s = self.split
        idx_a = np.asarray(idx, dtype=np.int64)
        starts, ends = s.offsets[idx_a], s.offsets[idx_a + 1]
        ids, mask = pad_rows(s.ids, starts, ends, self.data.pad_id)
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask.astype(np.int64))}
        if s.type_ids is not None and "token_type_ids" in self.data.input_names:
            inputs["token_type_ids"] = torch.from_numpy(pad_rows(s.type_ids, starts, ends, 0)[0])
        return inputs, torch.from_numpy(s.labels[idx_a])


def pad_rows(flat: np.ndarray, starts: np.ndarray, ends: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``flat[starts[i]:ends[i]]`` padded with ``pad`` to the longest (int64), and the mask of real entries."""
    lens = ends - starts
    mask = np.arange(int(lens.max()))[None, :] < lens[:, None]
    out = np.full(mask.shape, pad, dtype=np.int64)
    out[mask] = np.concatenate([flat[a:b] for a, b in zip(starts, ends)])
    return out, mask


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


#: a training mega-batch holds at least this many batches (sorted by length within it)
MIN_BATCHES_PER_GROUP = 4


def length_grouped_order(lengths: np.ndarray, batch_size: int, seed: int) -> list[int]:
    """A training epoch's order (seeded) with ``batch_order: length``: shuffled, then sorted by length within
    mega-batches of a few batches (``transformers``' ``get_length_grouped_indices``, the Trainer's
    ``group_by_length``), so a batch pads to a length close to its rows' own.

    Random batches of these short sentences pad to about twice the tokens they hold (2.0-2.5x on SST-2,
    SUBJ and SST-5 at batch 32), and a CPU pays for every padded token.  The library's mega-batch size
    (enough for 4 mega-batches an epoch, at most 50 batches) is kept, but never below
    :data:`MIN_BATCHES_PER_GROUP` batches: on small data its rule gives one-batch mega-batches, that is no
    grouping at all (225 rows at batch 32).  Four batches per mega-batch pad to 1.3-1.5x on those data sets,
    and their members are drawn anew each epoch.  Measured by ``benchmarks/length_grouping.py``: 1.4-1.8x the
    training throughput.  Not the default (:func:`train_order`): batches of similar lengths are not the random
    samples SGD assumes, and they cost accuracy (``benchmarks/trainer_parity.py``).
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    mult = min(50, max(MIN_BATCHES_PER_GROUP, len(lengths) // (batch_size * 4)))
    return get_length_grouped_indices([int(n) for n in lengths], batch_size, mega_batch_mult=mult,
                                      generator=torch.Generator().manual_seed(seed))


def train_order(lengths: np.ndarray, batch_size: int, seed: int,
                batch_order: str = TRAINING_DEFAULTS["batch_order"]) -> list[int]:
    """A training epoch's order (seeded; a resumed trial gets the same one back): a plain shuffle, as
    ``transformers.Trainer`` and the reference recipes train, unless the space asks for ``batch_order: length``
    (:func:`length_grouped_order`).

    Random batches are the default because grouping by length cost accuracy where it was measured with enough
    seeds: the Trainer itself, at one configuration on 2,000 SST-2 rows, lost 1.1 test points (0.835 vs 0.846,
    4 of 4 seeds) with its own ``group_by_length`` order (``benchmarks/trainer_parity.py``); on SUBJ and SST-5 it
    cost nothing measurable (``benchmarks/length_grouping.py``), so it stays a choice for speed."""
    if batch_order == "length":
        return length_grouped_order(lengths, batch_size, seed)
    return torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()


def _batch_order(config: Optional[Mapping[str, Any]]) -> str:
    return str((config or {}).get("batch_order", TRAINING_DEFAULTS["batch_order"]))


def window_length(requested: Optional[int], cap: int, train_lengths: np.ndarray) -> int:
    """The max length in tokens: ``--max-length`` if given, else the :data:`LENGTH_PERCENTILE` of the training
    rows' lengths rounded up to a multiple of 8; never above the model's own limit ``cap``."""
    if requested:
        return min(int(requested), cap)
    return min(cap, max(8, int(math.ceil(np.percentile(train_lengths, LENGTH_PERCENTILE) / 8) * 8)))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation and padding are call-time settings a saved tokenizer may carry; they do not change the ids
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(state, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps({"cls": type(tokenizer).__name__, "lower": getattr(tokenizer, "do_lower_case", None)})
    return hashlib.sha1((text + extra).encode("utf-8")).hexdigest()[:16]


def _special_frame(tokenizer: Any) -> Optional[tuple[int, int]]:
    """How many special tokens a single sequence gets before and after its body ([CLS] x [SEP] -> (1, 1))."""
    try:
        framed = list(tokenizer("hello world")["input_ids"])
        body = list(tokenizer("hello world", add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - an unusual tokenizer: fall back to its own truncation
        return None
    for at in range(len(framed) - len(body) + 1):
        if body and framed[at:at + len(body)] == body:
            return at, len(framed) - at - len(body)
    return None


def _truncate(rows: list[list[int]], max_len: int, prefix: int, suffix: int) -> list[list[int]]:
    """Rows longer than ``max_len`` lose the end of their body (as the tokenizer's truncation would)."""
    keep = max_len - suffix
    return [r if len(r) <= max_len else list(r[:keep]) + list(r[len(r) - suffix:]) for r in rows]


def _reinitialize(model: nn.Module, names: set[str]) -> None:
    """Fresh weights for the modules owning ``names`` (a dropped task head), drawn as transformers initialises a
    new classifier: linear weights from N(0, initializer_range), biases 0, norms 1 and 0."""
    from transformers.pytorch_utils import Conv1D

    std = float(getattr(model.config, "initializer_range", 0.02))
    owners = {n.rsplit(".", 1)[0] for n in names if "." in n}
    with torch.no_grad():
        for owner in sorted(owners):
            module = model.get_submodule(owner)
            if isinstance(module, (nn.Linear, Conv1D)):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()


def _model_max_length(tokenizer: Any, config: Any) -> int:
    caps = [v for v in (getattr(tokenizer, "model_max_length", None),
                        getattr(config, "max_position_embeddings", None)) if isinstance(v, int) and 0 < v < 100_000]
    return min(caps) if caps else 512


@register_task
class TextClassification(Task):
    name = "text-cls"
    #: the transformers auto class that puts this task's head on a backbone
    auto_model = "AutoModelForSequenceClassification"

    def _auto_model(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_model)

    # ------------------------------------------------------------------ data
    # ------------------------------------------------------------- backbones
    def describe_backbone(self, name: str, settings: Any) -> BackboneInfo:
        from transformers import AutoConfig, AutoTokenizer

        quiet_transformers()
        folder = local_folder(name)
        gguf = folder is not None and is_gguf(str(folder))
        if folder is not None and not (folder.is_file() if gguf else folder.is_dir()):
            raise UserError(f"backbone {name!r}: {'file' if gguf else 'folder'} {folder} does not exist")
        source = str(folder) if folder is not None else name
        trust = bool(getattr(settings, "trust_remote_code", False))
        found: dict[str, Any] = {"gguf": gguf_summary(folder)} if gguf else {}  # type: ignore[arg-type]
        where, extra = pretrained(source)
        try:
            config = AutoConfig.from_pretrained(where, trust_remote_code=trust, **extra)
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust, **extra)
        except (OSError, ValueError) as exc:
            if folder is not None:
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                what = "a GGUF file transformers can read" if gguf else "a Hugging Face model folder"
                raise UserError(f"backbone {name!r}: {folder} is not {what} ({first})") from None
            raise HubUnavailable(offline_hint(name, exc)) from None
        # the layout is read from a weightless skeleton: no download, no memory
        with torch.device("meta"):
            skeleton = self._auto_model().from_config(config, trust_remote_code=trust)
        list_name = find_block_list(skeleton)
        num_layers = len(skeleton.get_submodule(list_name)) if list_name else 0
        details: dict[str, Any] = {"model_type": getattr(config, "model_type", "?"),
                                   "max_length": _model_max_length(tokenizer, config)}
        details.update(found)
        details.update(self._fine_tuned_from(name, None if gguf else folder, config))
        return BackboneInfo(name=name, source=source, num_layers=num_layers,
                            preprocessing=tokenizer_fingerprint(tokenizer), details=details)

    def _fine_tuned_from(self, name: str, folder: Optional[Path], config: Any) -> dict[str, Any]:
        """What an already fine-tuned classifier (e.g. an earlier run's ``best/``) brings: its head is dropped and
        a fresh one built for this run's labels; its labels and the run that produced it are recorded."""
        heads = [a for a in (getattr(config, "architectures", None) or [])
                 if a.endswith(("ForSequenceClassification", "ForTokenClassification"))]
        if not heads:
            return {}
        found: dict[str, Any] = {"fine_tuned": {"architecture": heads[0],
                                                "labels": [str(v) for v in (config.id2label or {}).values()]}}
        sidecar = folder / "autotransfer.json" if folder is not None else None
        if sidecar is not None and sidecar.is_file():
            try:
                run = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                run = {}
            if run.get("task") not in (None, self.name):
                raise UserError(f"backbone {name!r}: a {run['task']} model (its autotransfer.json); {self.name} "
                                f"takes a plain backbone or a {self.name} run's best/")
            found["fine_tuned"]["run"] = {k: run.get(k) for k in ("task", "trial_id", "backbone",
                                                                   "validation_metric", "test_metrics")}
        return found

    # ---------------------------------------------------------- preparation
    def prepare(self, backbones: list[BackboneInfo], splits: LabeledSplits,
                settings: Any) -> tuple[dict[str, Any], PreparationStats]:
        """Tokenize each split once per distinct (tokenizer, max length)."""
        from transformers import AutoTokenizer

        quiet_transformers()
        stats = PreparationStats()
        start = time.perf_counter()
        cache: dict[tuple[str, int], TokenizedData] = {}
        lengths_of: dict[str, dict[str, list[list[int]]]] = {}
        out: dict[str, Any] = {}
        trust = bool(getattr(settings, "trust_remote_code", False))
        for bb in backbones:
            where, extra = pretrained(bb.source)
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust, **extra)
            fp = bb.preprocessing
            if fp not in lengths_of:
                # one untruncated pass per tokenizer gives both the ids and the length statistics
                lengths_of[fp] = {name: self._tokenize(tokenizer, splits.split(name), None) for name in SPLITS}
                stats.runs += 1
            full = lengths_of[fp]
            max_len = window_length(settings.max_length, int(bb.details.get("max_length", 512)),
                                    np.fromiter((len(r) for r in full["train"]), dtype=np.int64))
            key = (fp, max_len)
            if key not in cache:
                longest = max(len(r) for rows in full.values() for r in rows)
                if longest <= max_len:
                    encoded = full  # nothing to truncate: reuse the first pass
                elif splits.train.pairs is None and (frame := _special_frame(tokenizer)) is not None:
                    # cut each too-long row's body, keeping the tokenizer's own leading/trailing specials
                    encoded = {name: _truncate(rows, max_len, *frame) for name, rows in full.items()}
                else:  # sentence pairs: let the tokenizer split the budget between the two texts
                    encoded = {name: self._tokenize(tokenizer, splits.split(name), max_len) for name in SPLITS}
                    stats.runs += 1
                cache[key] = self._pack(encoded, splits, tokenizer, f"{fp}-{max_len}", max_len)
            out[bb.name] = cache[key]
        stats.distinct = len(cache)
        stats.seconds = time.perf_counter() - start
        return out, stats

    @staticmethod
    def _tokenize(tokenizer: Any, split: Split, max_len: Optional[int]) -> Any:
        kwargs: dict[str, Any] = dict(add_special_tokens=True, return_attention_mask=False,
                                      return_token_type_ids=split.pairs is not None)
        if max_len is None:
            kwargs.update(truncation=False)
        else:
            kwargs.update(truncation=True, max_length=max_len)
        enc = tokenizer(list(split.inputs), split.pairs, **kwargs) if split.pairs is not None \
            else tokenizer(list(split.inputs), **kwargs)
        if split.pairs is not None:
            return list(zip(enc["input_ids"], enc["token_type_ids"]))
        return enc["input_ids"]

    @staticmethod
    def _pack(encoded: Mapping[str, Any], splits: LabeledSplits, tokenizer: Any, key: str,
              max_len: int) -> TokenizedData:
        packed = {}
        for name in SPLITS:
            rows = encoded[name]
            pairs = bool(rows) and isinstance(rows[0], tuple)
            ids_rows = [r[0] for r in rows] if pairs else rows
            lens = np.fromiter((len(r) for r in ids_rows), dtype=np.int64, count=len(ids_rows))
            offsets = np.zeros(len(ids_rows) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            ids = np.fromiter((t for r in ids_rows for t in r), dtype=np.int32, count=int(offsets[-1]))
            type_ids = None
            if pairs:
                type_ids = np.fromiter((t for r in rows for t in r[1]), dtype=np.int8, count=int(offsets[-1]))
            packed[name] = TokenizedSplit(ids, offsets, type_ids, splits.split(name).labels.copy())
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return TokenizedData(key=key, max_length=max_len, pad_id=int(pad),
                             input_names=tuple(tokenizer.model_input_names), splits=packed)

    def recipes(self) -> list[Recipe]:
        """The Hugging Face tutorials' recipe: full fine-tuning at lr 2e-5 (head too), weight decay 0.01,
        no warm-up, batch 32 -- for 3 epochs, or the search's step floor on small data."""
        return [Recipe("full fine-tuning, lr 2e-5", "full",
                       {"lr": 2e-5, "head_lr": 2e-5, "layer_decay": 1.0, "weight_decay": 0.01, "warmup_ratio": 0.0,
                        "batch_size": 32})]

    # ----------------------------------------------------------------- model
    def build(self, backbone: BackboneInfo, label_names: list[str], settings: Mapping[str, Any]) -> ModelBundle:
        from transformers import AutoConfig

        quiet_transformers()
        trust = bool(settings.get("trust_remote_code", False))
        id2label = {i: name for i, name in enumerate(label_names)}
        where, extra = pretrained(backbone.source)  # a GGUF file: its folder and gguf_file=
        config = AutoConfig.from_pretrained(where, num_labels=len(label_names), id2label=id2label,
                                            label2id={v: k for k, v in id2label.items()}, trust_remote_code=trust,
                                            **extra)
        if config.pad_token_id is None and getattr(config, "eos_token_id", None) is not None:
            config.pad_token_id = config.eos_token_id
        fine_tuned = "fine_tuned" in backbone.details
        if extra:  # a GGUF file: every weight unpacked to float at load (training needs dense float weights)
            extra["quantization_config"] = _dequantized_gguf()
        model, info = self._auto_model().from_pretrained(
            where, config=config, output_loading_info=True, dtype=torch.float32, trust_remote_code=trust,
            ignore_mismatched_sizes=fine_tuned, **extra)
        if extra and getattr(model, "hf_quantizer", None) is not None:
            # its weights are plain float tensors now; transformers still marks it GGUF-quantised and would refuse
            # to save it: a plain model, so the export is a standard float safetensors folder
            model.hf_quantizer.remove_quantization_config(model)
        named = dict(model.named_parameters())
        fresh = set(info.get("missing_keys", ())) | {k for k, *_ in info.get("mismatched_keys", ())}
        if fine_tuned:  # an earlier task's head: everything outside the base model is built anew
            prefix = f"{model.base_model_prefix}."
            fresh |= {n for n in named if not n.startswith(prefix)}
            _reinitialize(model, fresh)
        head = [n for n in named if n in fresh]
        list_name = find_block_list(model, skip=[m.rsplit(".", 1)[0] for m in head])
        if list_name is None:
            block_of, n_blocks, targets = {}, 0, linear_leaf_names(model)
        else:
            block_of, n_blocks = blocks_by_list(model, list_name)
            targets = self._lora_targets(model, list_name)
        return layout(model, head, block_of, n_blocks, targets)

    @staticmethod
    def _lora_targets(model: nn.Module, list_name: str) -> list[str]:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

        model_type = getattr(model.config, "model_type", None)
        if model_type in KNOWN:
            return list(KNOWN[model_type])
        return linear_leaf_names(model.get_submodule(list_name))

    # ---------------------------------------------------------------- batches
    def batches(self, prepared: TokenizedData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None) -> Iterable[Batch]:
        return self._loader(prepared, split, batch_size, train, seed, pin_memory, _Collate(prepared, split),
                            _batch_order(config))

    def indexed_batches(self, prepared: TokenizedData, split: str, batch_size: int, *, train: bool, seed: int = 0,
                        pin_memory: bool = False, config: Optional[Mapping[str, Any]] = None,
                        ) -> Iterable[tuple[Batch, np.ndarray]]:
        """Token ids are a fixed function of the rows: always."""
        return self._loader(prepared, split, batch_size, train, seed, pin_memory,
                            IndexedCollate(_Collate(prepared, split)), _batch_order(config))

    @staticmethod
    def _loader(prepared: TokenizedData, split: str, batch_size: int, train: bool, seed: int, pin_memory: bool,
                collate: Any, batch_order: str) -> DataLoader:
        data = prepared.splits[split]
        if train:
            # generator=: the loader draws its base seed from it, not from the global RNG (dropout's, which a
            # restored trial has just set back to where it stopped)
            return DataLoader(range(len(data)), batch_size=batch_size,
                              sampler=train_order(data.lengths, batch_size, seed, batch_order), collate_fn=collate,
                              generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
        # evaluation: similar lengths together, so batches pad little
        return DataLoader(range(len(data)), batch_sampler=length_sorted_batches(data.lengths, batch_size),
                          collate_fn=collate, pin_memory=pin_memory)

    def num_examples(self, prepared: TokenizedData, split: str) -> int:
        return len(prepared.splits[split])

    def with_train(self, prepared: TokenizedData, splits: tuple[str, ...]) -> TokenizedData:
        parts = [prepared.splits[name] for name in splits]
        offsets = [parts[0].offsets]
        for part in parts[1:]:
            offsets.append(part.offsets[1:] + offsets[-1][-1])
        type_ids = None if any(p.type_ids is None for p in parts) else np.concatenate([p.type_ids for p in parts])
        merged = TokenizedSplit(np.concatenate([p.ids for p in parts]), np.concatenate(offsets), type_ids,
                                np.concatenate([p.labels for p in parts]))
        return dataclasses.replace(prepared, splits={**prepared.splits, "train": merged})

    def labels(self, prepared: TokenizedData, split: str) -> np.ndarray:
        return prepared.splits[split].labels

    def logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs).logits

    def classifier_input(self, captured: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """A decoder's sequence classifier (GPT-2, Llama...) scores every position, then keeps the last real
        token's scores; its classifier input is (batch, length, hidden): keep that token's row.  Batches are
        padded on the right, so it is the row's last unmasked position."""
        if captured.dim() != 3:
            return captured
        last = inputs["attention_mask"].sum(-1).clamp(min=1) - 1
        return captured[torch.arange(captured.shape[0], device=captured.device), last.to(captured.device)]

    ranking_description = "token states averaged over the real tokens"

    def ranking_module(self, model: nn.Module) -> Optional[nn.Module]:
        """The encoder (transformers' ``base_model``): the pre-rank scores its token states, see
        :meth:`ranking_rows`."""
        base = getattr(model, "base_model", None)
        return base if isinstance(base, nn.Module) and base is not model else None

    def ranking_rows(self, output: Any, head_input: torch.Tensor,
                     inputs: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """An encoder's last-layer token states averaged over the real tokens; a decoder (its classifier scores
        every position) keeps the token it classifies from, as its head does (None).

        Why not the classifier's input: a BERT-style head reads the first token through a pooler trained for
        next-sentence prediction, or drawn at random when the checkpoint has none (sentence-transformers
        checkpoints such as paraphrase-MiniLM-L3-v2); averaged token states are the better frozen features
        (Reimers & Gurevych, EMNLP 2019). On 9 shared SST-2 / SUBJ / SST-5 subsets, LogME on them picked the MiniLM
        encoder that fine-tuned better in 6 cases, on the pooler output in 1 (``benchmarks/prerank.py``)."""
        if head_input.dim() == 3:
            return None
        states = output[0]  # last_hidden_state (a ModelOutput or, with return_dict off, a tuple)
        mask = inputs["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)

    # ----------------------------------------------------------------- export
    def export(self, model: nn.Module, backbone: BackboneInfo, label_names: list[str], out: Path) -> None:
        from transformers import AutoTokenizer

        model.save_pretrained(out, safe_serialization=True)
        where, extra = pretrained(backbone.source)
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # a decoder's tokenizer (GPT-2, Llama) has none: the one the model was trained with, so that a
            # pipeline can pad batches (the model's config carries the same id)
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # as in training: absolute positions (GPT-2) stay where they were
        tokenizer.save_pretrained(out)

    def predict(self, model_dir: Path, data: Path, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        from transformers import pipeline

        from autotransfer.tables import read_table, text_column

        quiet_transformers()
        df = read_table(data)
        col = text_column(df, settings.get("text_col"), data)
        clf = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), device=-1)
        texts = df[col].astype(str).tolist()
        bs = int(settings.get("batch_size", 32))
        for row, pred in zip(df.to_dict(orient="records"),
                             clf(texts, batch_size=bs, truncation=True)):
            yield {**row, "prediction": pred["label"], "score": float(pred["score"])}
