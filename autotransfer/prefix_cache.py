"""A ``freeze`` trial's frozen bottom computed once, not every epoch.

A trial that keeps the stem and the bottom ``k`` blocks frozen for its whole length
(:meth:`~autotransfer.strategies.Strategy.frozen_prefix`: the ``freeze`` strategy) runs them in eval mode,
a fixed feature extractor like a linear probe's backbone.  When a batch's inputs are a fixed function of
its rows (text; images with ``augment: none``: :meth:`~autotransfer.tasks.Task.indexed_batches`), so is
that prefix's output.  It is computed here once, in one eval-mode pass over the training split and one over
the validation split, each stopped after block ``k``, kept per row (a text row without its padding) and
*replayed*: the frozen modules' ``forward`` hands back the batch's rows instead of computing them, and a
training step or an evaluation runs only the blocks above.  On small data a trial trains for many epochs
(the step floor) and evaluates a dozen times, so the frozen bottom was recomputed tens of times per trial.

Generic, with no per-architecture code: the prefix is the largest modules whose parameters all lie in the
stem and the frozen blocks; each such module's output structure (a tensor, or a tuple led by one) and shape
are recorded in the pass.  A module whose output has the prefix output's shape (a text encoder's embeddings,
each block) hands back the replayed rows; one whose output has another, fixed shape (a ViT's patch
embedding, before the class token joins it) hands back zeros of its own shape, so the work between the
replaced modules that no module holds (a ViT's class token and position embedding, parameters of the model
itself) runs on cheap placeholders whose result the next replaced module ignores.  Parameter-free modules
registered between the replaced ones (a ViT's position dropout) run in eval mode with them.  The replay is
checked on the trial's first training batch and first validation batch against the model itself (eval
mode, the same logits within float tolerance); where it does not hold -- rows past the size limit, a
module whose output shape varies, logits that differ -- the trial trains (or evaluates) as before, and
its report says why (``prefix_cache``).  A task whose evaluation batches are not indexed rows (token
tagging scores whole sentences, trains on windows) replays training only.

The rows are kept in the worker process, keyed by the search, backbone and depth, so a later trial of the
same (backbone, depth) that Ray runs in the same worker (it reuses workers) skips the pass too; at most
:data:`LIMIT_MB` in all, least recently used dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from autotransfer.strategies.base import ModelBundle

#: the most memory the kept prefix outputs of one worker process may take, in MiB
LIMIT_MB = 1024
#: a module attribute :func:`autotransfer.training.train_mode` reads: keep this module in eval mode
FROZEN = "_autotransfer_frozen_prefix"


class NotReplayable(RuntimeError):
    """The prefix cannot be replayed for this trial; the one-line reason."""


@dataclass
class PrefixRows:
    """The frozen prefix's output for every row of one split, and how each replaced module returns it."""

    rows: list[torch.Tensor]
    #: rows are cut at their attention mask's length (dimension 0 of a row), padded back per batch
    ragged: bool
    #: module name -> its output structure: () for a tensor, else the items after the leading tensor
    kinds: dict[str, tuple]
    seconds: float
    #: module name -> None where its (leading) output has the prefix output's shape, else its fixed shape per row
    shapes: dict[str, Optional[tuple]]
    #: the layout the prefix output had in the model (a CNN's channels-last maps): a replayed batch is given it
    #: back, so the first trainable module runs the same kernels, and rounds the same, as in a plain trial
    memory_format: torch.memory_format

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.rows)


@dataclass
class Kept:
    """What a worker keeps for one (search, backbone, depth): the rows per split, and why a split has none."""

    splits: dict[str, PrefixRows]
    off: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.splits.values())

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.splits.values())


_STORE: "OrderedDict[tuple, Kept]" = OrderedDict()


def prefix_modules(model: nn.Module, bundle: ModelBundle, depth: int) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """The frozen prefix as modules, in registration order: for the stem and for each of the bottom ``depth``
    blocks, the largest modules whose parameters all belong to it (a block's own module, not the encoder that
    holds all blocks: its output is a structure, a block's is a tensor); and the frozen parameters that lie in
    none of them (held by a module that also holds others, such as a ViT's position embedding)."""
    groups = [set(bundle.stem)] + [set(block) for block in bundle.blocks[:depth]]
    chosen: list[tuple[str, nn.Module]] = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c, _ in chosen):
            continue
        params = {f"{name}.{p}" for p, _ in module.named_parameters()}
        if params and any(params <= group for group in groups):
            chosen.append((name, module))
            covered |= params
    return chosen, sorted(set().union(*groups) - covered)


def between(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The parameter-free modules registered between the first and the last of ``modules`` and inside none of
    them (a ViT's position dropout between its patch embedding and its first block): part of the frozen bottom's
    computation, held by no frozen module."""
    if not modules:
        return []
    names = [n for n, _ in modules]
    found: list[tuple[str, nn.Module]] = []
    started = False
    for name, module in model.named_modules():
        if name == names[0]:
            started = True
        if name == names[-1]:
            break
        if not started or not name or any(name == n or name.startswith(n + ".") for n in names):
            continue
        if next(module.parameters(), None) is None and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return found


def mark_frozen(modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Keep these modules in eval mode while the model trains (see :func:`autotransfer.training.train_mode`)."""
    for _, module in modules:
        setattr(module, FROZEN, True)


class _Stop(Exception):
    """Raised by the last prefix module's hook: the rest of the forward pass is not needed."""


def _kind(name: str, out: Any) -> tuple:
    if isinstance(out, torch.Tensor):
        return ()
    if type(out) is tuple and out and isinstance(out[0], torch.Tensor) and not any(
            isinstance(o, torch.Tensor) for o in out[1:]):
        return tuple(out[1:])
    raise NotReplayable(f"{name} returns a {type(out).__name__}, not a tensor")


def _lengths(state: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """Each row's real length when ``state`` is (batch, position, ...) over a right-padded attention mask."""
    mask = inputs.get("attention_mask")
    if mask is None or state.dim() < 3 or tuple(state.shape[:2]) != tuple(mask.shape):
        return None
    return mask.sum(1)


@torch.no_grad()  # not inference mode: the rows feed layers that train, and autograd saves its inputs
def compute_rows(task: Any, model: nn.Module, modules: list[tuple[str, nn.Module]], prepared: Any, batch_size: int,
                 device: torch.device, dtype: Optional[torch.dtype], config: Mapping[str, Any],
                 limit_bytes: int, split: str = "train") -> PrefixRows:
    """One eval-mode pass over ``split``, stopped after the last prefix module: its output per row."""
    from autotransfer.training import _autocast, train_mode

    start = time.perf_counter()
    last_name = modules[-1][0]
    kinds: dict[str, tuple] = {}
    shapes: dict[str, Optional[tuple]] = {}
    batch_shapes: dict[str, tuple] = {}  # this batch's output shape of each module that ran
    captured: list[torch.Tensor] = []

    def hook_for(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            if name not in kinds:
                kinds[name] = _kind(name, out)
            lead = out if isinstance(out, torch.Tensor) else out[0]
            batch_shapes[name] = tuple(lead.shape)
            if name == last_name:
                captured.append(lead)
                raise _Stop

        return hook

    training = split == "train"
    loader = task.indexed_batches(prepared, split, batch_size, train=training, seed=0, config=config)
    if loader is None:
        raise NotReplayable("this task's training batches are not a fixed function of their rows" if training else
                            f"this task's {split} batches are not indexed rows")
    rows: list[Optional[torch.Tensor]] = [None] * task.num_examples(prepared, split)
    ragged: Optional[bool] = None
    memory_format = torch.contiguous_format
    size = 0
    was_training = model.training
    rng = torch.get_rng_state()  # a loader may seed the global generator: the trial's dropout draws stay its own
    model.eval()
    hooks = [m.register_forward_hook(hook_for(name)) for name, m in modules]
    try:
        for inputs, _labels, idx in loader:
            inputs = {k: v.to(device) for k, v in inputs.items()}
            try:
                with _autocast(device, dtype):
                    task.logits(model, inputs)
            except _Stop:
                pass
            if not captured:
                raise NotReplayable(f"{last_name} did not run in the forward pass")
            state = captured.pop().detach()
            if state.dim() == 4 and not state.is_contiguous() and state.is_contiguous(
                    memory_format=torch.channels_last):
                memory_format = torch.channels_last
            for name, shape in batch_shapes.items():  # what each replaced module will hand back for a batch
                own = None if shape == tuple(state.shape) else shape[1:]
                if shapes.setdefault(name, own) != own:
                    raise NotReplayable(f"{name}'s output shape varies from batch to batch")
            batch_shapes.clear()
            lengths = _lengths(state, inputs)
            ragged = lengths is not None if ragged is None else ragged
            for j, i in enumerate(idx.tolist()):
                row = state[j, :int(lengths[j])] if lengths is not None else state[j]
                rows[i] = row.to("cpu", copy=True).contiguous()
                size += rows[i].numel() * rows[i].element_size()
            if size > limit_bytes:
                raise NotReplayable(f"the frozen prefix's outputs pass the {limit_bytes / 2**20:.0f} MiB kept for them")
    finally:
        for h in hooks:
            h.remove()
        torch.set_rng_state(rng)
        if was_training:
            train_mode(model)
    if any(r is None for r in rows):
        raise NotReplayable(f"the {split} batches did not cover every row")
    return PrefixRows(rows=rows, ragged=bool(ragged), kinds=kinds,  # type: ignore[arg-type]
                      seconds=time.perf_counter() - start, shapes=shapes, memory_format=memory_format)


class Replay:
    """The prefix modules' ``forward`` replaced: with a batch loaded (:meth:`load`) they return its rows, otherwise
    they compute as before.  :meth:`remove` puts the modules back."""

    def __init__(self, modules: list[tuple[str, nn.Module]], kept: Kept):
        self.found = dict(kept.splits)
        self.off = dict(kept.off)
        #: splits whose replay was checked against the model (:func:`verify`)
        self.verified: set[str] = set()
        self.state: Optional[torch.Tensor] = None
        train = kept.splits["train"]
        self.modules = [(name, m) for name, m in modules if name in train.kinds]  # those the forward pass ran
        for name, module in self.modules:  # instance attribute: this model only
            module.forward = self._forward(module.forward, train.kinds[name], train.shapes.get(name))

    def _forward(self, original: Any, kind: tuple, shape: Optional[tuple]) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.state is None:
                return original(*args, **kwargs)
            # a module before the prefix's end whose output has its own shape: a placeholder, as cheap as it gets
            # (what is computed from it before the next replaced module is dropped there; verify() checks that)
            out = self.state if shape is None else self.state.new_zeros((self.state.shape[0], *shape))
            return out if not kind else (out, *kind)

        return forward

    def covers(self, split: str) -> bool:
        return split in self.found

    def drop(self, split: str, why: str) -> None:
        """Stop replaying ``split`` (its batches compute the prefix again)."""
        self.found.pop(split, None)
        self.off[split] = why

    def load(self, idx: np.ndarray, inputs: Mapping[str, torch.Tensor], device: torch.device,
             split: str = "train") -> None:
        found = self.found[split]
        rows = [found.rows[i] for i in idx.tolist()]
        if found.ragged:
            state = nn.utils.rnn.pad_sequence(rows, batch_first=True)
            width = inputs["attention_mask"].shape[1]
            if state.shape[1] < width:  # the batch pads past its longest row
                state = nn.functional.pad(state, (0, 0) * (state.dim() - 2) + (0, width - state.shape[1]))
        else:
            # stacked straight into the model's layout: one copy (stacking, then converting, copied twice: 4.5 ms
            # instead of 0.4 ms for a batch of 32 MobileNetV2 maps of 24 x 56 x 56)
            out = torch.empty((len(rows), *rows[0].shape), dtype=rows[0].dtype, memory_format=found.memory_format)
            state = torch.stack(rows, out=out)
        self.state = state.to(device, non_blocking=True)

    def clear(self) -> None:
        self.state = None

    def remove(self) -> None:
        self.state = None
        for _, module in self.modules:
            if "forward" in module.__dict__:
                del module.forward


def verify(task: Any, model: nn.Module, replay: Replay, inputs: Mapping[str, torch.Tensor], idx: np.ndarray,
           device: torch.device, dtype: Optional[torch.dtype], split: str = "train") -> None:
    """The replayed model's logits on one batch match the model's own (eval mode), or :class:`NotReplayable`."""
    from autotransfer.training import _autocast, train_mode

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device, dtype):
            want = task.logits(model, inputs)
            replay.load(idx, inputs, device, split)
            try:
                got = task.logits(model, inputs)
            except Exception as exc:  # noqa: BLE001 - e.g. a module between the replaced ones reshapes
                raise NotReplayable(f"the replayed forward pass fails: {type(exc).__name__}: {exc}".splitlines()[0]
                                    ) from None
            finally:
                replay.clear()
    finally:
        if was_training:
            train_mode(model)
    mask = inputs.get("attention_mask")
    if mask is not None and got.shape == want.shape and tuple(got.shape[:2]) == tuple(mask.shape):
        keep = mask.bool()  # a tagger's logits at padded positions are not scored (and the replay pads with 0)
        got, want = got[keep], want[keep]
    # relative to the logits' own size: a fresh head's are small (weights drawn at std 0.02)
    tol = 1e-4 if dtype is None else 5e-2
    gap = float((got.float() - want.float()).abs().max()) if got.shape == want.shape else float("inf")
    scale = float(want.float().abs().max())
    if not gap <= tol * scale + 1e-6:
        raise NotReplayable(f"replayed logits differ from the model's by up to {gap:.2g} (of {scale:.2g})")
    replay.verified.add(split)


def attach(task: Any, model: nn.Module, modules: list[tuple[str, nn.Module]], key: Optional[tuple],
           prepared: Any, batch_size: int, device: torch.device, dtype: Optional[torch.dtype],
           config: Mapping[str, Any], limit_mb: Optional[int] = None) -> tuple[Replay, str]:
    """A :class:`Replay` of the prefix on ``model`` (rows of the training and validation splits kept under ``key``,
    or computed), and how they were had (``computed in 1.2s`` / ``reused``; :func:`describe` adds the splits not
    replayed).  :class:`NotReplayable` when training cannot be."""
    limit = (LIMIT_MB if limit_mb is None else limit_mb) * 2**20
    kept = _STORE.get(key) if key is not None else None
    if kept is not None:
        _STORE.move_to_end(key)  # type: ignore[arg-type]
        how = "reused"
    else:
        kept = Kept({"train": compute_rows(task, model, modules, prepared, batch_size * 2, device, dtype, config,
                                           limit)}, {})
        try:
            kept.splits["validation"] = compute_rows(task, model, modules, prepared, batch_size * 2, device, dtype,
                                                     config, max(0, limit - kept.nbytes), split="validation")
        except NotReplayable as exc:  # the evaluations compute the prefix, as before
            kept.off["validation"] = str(exc)
        else:
            if kept.splits["validation"].shapes != kept.splits["train"].shapes:  # the replay hands back train's
                del kept.splits["validation"]
                kept.off["validation"] = "its batches' module output shapes differ from training's"
        how = f"computed in {kept.seconds:.1f}s"
        if key is not None:
            _STORE[key] = kept
            while sum(k.nbytes for k in _STORE.values()) > limit and len(_STORE) > 1:
                _STORE.popitem(last=False)
    return Replay(modules, kept), how


def describe(how: str, replay: Replay) -> str:
    """A trial's ``prefix_cache`` note: how the rows were had, and each split not replayed with its reason."""
    return how + "".join(f"; {split}: off: {why}" for split, why in replay.off.items())
