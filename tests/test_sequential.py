"""An earlier run's best/ as a backbone: its task head is dropped, the rest transfers, the origin is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autotransfer
from autotransfer.errors import UserError
from autotransfer.tasks import get_task

TASK = get_task("text-cls")


class _S:
    trust_remote_code = False
    max_length = None


@pytest.fixture(scope="module")
def earlier_best(tiny_bert, tmp_path_factory) -> Path:
    """A fine-tuned 3-class classifier saved as an autotransfer best/ folder (with its sidecar)."""
    bundle = TASK.build(TASK.describe_backbone(str(tiny_bert), _S()), ["a", "b", "c"], {})
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.05)  # "fine-tuned": every weight moved away from the pretrained backbone
    out = tmp_path_factory.mktemp("earlier") / "best"
    bundle.model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    (out / "autotransfer.json").write_text(json.dumps({"task": "text-cls", "trial_id": "abc123",
                                                       "backbone": str(tiny_bert), "validation_metric": 0.9}))
    return out


def test_a_fine_tuned_classifier_loses_its_head_and_keeps_its_encoder(earlier_best):
    from safetensors.torch import load_file

    info = TASK.describe_backbone(str(earlier_best), _S())
    assert info.details["fine_tuned"]["labels"] == ["a", "b", "c"]
    assert info.details["fine_tuned"]["run"]["trial_id"] == "abc123"
    saved = load_file(str(earlier_best / "model.safetensors"))
    for labels in (["neg", "pos"], ["x", "y", "z"]):  # another number of labels, and the same number
        torch.manual_seed(0)
        bundle = TASK.build(info, labels, {})
        state = bundle.model.state_dict()
        assert set(bundle.head) == {"classifier.weight", "classifier.bias"}
        assert bundle.model.config.id2label == dict(enumerate(labels))
        assert not torch.equal(state["classifier.bias"], torch.full_like(state["classifier.bias"], 0.05))
        assert float(state["classifier.bias"].abs().max()) == 0.0  # drawn anew, not the earlier task's
        key = "bert.encoder.layer.0.attention.self.query.weight"
        assert torch.equal(state[key], saved[key])  # the fine-tuned encoder transfers


def test_a_best_folder_of_another_task_is_refused_in_one_line(earlier_best, tmp_path):
    import shutil

    other = tmp_path / "ner-best"
    shutil.copytree(earlier_best, other)
    (other / "autotransfer.json").write_text(json.dumps({"task": "token-cls"}))
    with pytest.raises(UserError, match="a token-cls model .* takes a plain backbone or a text-cls run's best/"):
        TASK.describe_backbone(str(other), _S())


@pytest.mark.e2e
def test_the_search_records_where_a_fine_tuned_backbone_came_from(ray_session, sentiment_dir, earlier_best,
                                                                   tmp_path):
    result = autotransfer.search(task="text-cls", data=sentiment_dir, backbones=[str(earlier_best)],
                                 strategies=["linear_probe"], num_samples=1, max_epochs=1, seed=0,
                                 dashboard=False, output=tmp_path / "run", space=_space(tmp_path, earlier_best))
    meta = json.loads((tmp_path / "run" / "results.json").read_text())
    assert meta["backbones"][str(earlier_best)]["fine_tuned"]["run"]["trial_id"] == "abc123"
    assert result.records[0].ok


def _space(tmp_path, backbone):
    p = tmp_path / "space.yaml"
    p.write_text(f"task: text-cls\nbackbones: [\"{backbone}\"]\nstrategies:\n  linear_probe: {{}}\n")
    return p
