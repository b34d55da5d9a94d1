"""The text task: backbones resolved up front, tokenization once, dynamic padding."""

from __future__ import annotations

import numpy as np
import pytest

from autotransfer.errors import UserError
from autotransfer.tables import load_text_splits
from autotransfer.tasks import get_task

TASK = get_task("text-cls")


class _S:
    trust_remote_code = False
    max_length = None


def test_backbones_sharing_a_tokenizer_are_tokenized_once(sentiment_dir, tiny_bert, tiny_distilbert):
    splits = load_text_splits(sentiment_dir)
    infos = [TASK.describe_backbone(str(p), _S()) for p in (tiny_bert, tiny_distilbert)]
    assert infos[0].num_layers == 2 and infos[1].num_layers == 3
    prepared, stats = TASK.prepare(infos, splits, _S())
    assert stats.distinct == 1 and stats.runs == 1
    assert prepared[infos[0].name] is prepared[infos[1].name]
    data = prepared[infos[0].name]
    assert len(data.splits["train"]) == 480
    assert data.splits["train"].ids.dtype == np.int32


def test_batches_pad_to_the_longest_row(sentiment_dir, tiny_bert):
    splits = load_text_splits(sentiment_dir)
    info = TASK.describe_backbone(str(tiny_bert), _S())
    prepared, _ = TASK.prepare([info], splits, _S())
    data = prepared[info.name]
    lengths = data.splits["validation"].lengths
    widths = []
    for inputs, _labels in TASK.batches(data, "validation", 16, train=False):
        mask = inputs["attention_mask"]
        assert inputs["input_ids"].shape == mask.shape
        assert int(mask.sum(1).max()) == mask.shape[1]  # padded to this batch's longest, no further
        widths.append(mask.shape[1])
    assert max(widths) == lengths.max() and min(widths) < lengths.max()
    n = sum(len(labels) for _, labels in TASK.batches(data, "train", 16, train=True, seed=0))
    assert n == 480


def test_max_length_truncates(sentiment_dir, tiny_bert):
    class Short(_S):
        max_length = 6

    splits = load_text_splits(sentiment_dir)
    info = TASK.describe_backbone(str(tiny_bert), Short())
    prepared, stats = TASK.prepare([info], splits, Short())
    data = prepared[info.name].splits["train"]
    assert data.lengths.max() == 6 and stats.runs == 1  # one tokenizer pass; rows cut afterwards
    # the cut rows equal what the tokenizer's own truncation gives
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    expected = tok(splits.train.inputs[:20], truncation=True, max_length=6)["input_ids"]
    got = [data.ids[data.offsets[i]:data.offsets[i + 1]].tolist() for i in range(20)]
    assert got == expected


def test_missing_folder_and_offline_hub_id_fail_before_any_trial(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TASK.describe_backbone(str(tmp_path / "nope"), _S())
    with pytest.raises(UserError, match="neither a local folder nor loadable from the model hub"):
        TASK.describe_backbone("no-such-org/no-such-model-xyz", _S())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        TASK.describe_backbone(str(tmp_path / "empty"), _S())


def test_training_batches_are_a_seeded_shuffle_unless_the_space_groups_them_by_length(sentiment_dir, tiny_bert):
    import torch

    splits = load_text_splits(sentiment_dir)
    info = TASK.describe_backbone(str(tiny_bert), _S())
    prepared, _ = TASK.prepare([info], splits, _S())
    data = prepared[info.name]
    lengths = data.splits["train"].lengths
    assert lengths.min() < lengths.max()

    def epoch(seed, config=None):
        return [(inputs["attention_mask"], labels) for inputs, labels in
                TASK.batches(data, "train", 16, train=True, seed=seed, config=config)]

    def padded_per_real(batches):
        return sum(m.numel() for m, _ in batches) / sum(int(m.sum()) for m, _ in batches)

    # the default: the rows of torch's seeded shuffle, 16 at a time (what Trainer's random sampler draws)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    default = epoch(0)
    assert [m.sum(1).tolist() for m, _ in default] == [
        lengths[shuffled[i:i + 16]].tolist() for i in range(0, len(shuffled), 16)]
    assert torch.equal(torch.cat([y for _, y in default]), torch.as_tensor(data.splits["train"].labels[shuffled]))
    assert [m.shape for m, _ in epoch(0, {"batch_order": "random"})] == [m.shape for m, _ in default]
    grouped = epoch(0, {"batch_order": "length"})
    # grouped: every row once per epoch, with less padding than the shuffle
    assert sorted(int(n) for m, _ in grouped for n in m.sum(1)) == sorted(lengths.tolist())
    assert sum(len(y) for _, y in grouped) == len(lengths)
    assert padded_per_real(grouped) < padded_per_real(default)
    # either order: the same seed gives the same batches (a resumed trial skips exactly the batches it did),
    # another seed not
    for config in (None, {"batch_order": "length"}):
        first, again, other = epoch(0, config), epoch(0, config), epoch(1, config)
        assert all(torch.equal(a, b) and torch.equal(x, y) for (a, x), (b, y) in zip(first, again))
        assert any(a.shape != b.shape or not torch.equal(a, b) for (a, _), (b, _) in zip(first, other))
