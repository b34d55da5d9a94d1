"""Sequential transfer (--source-data): each backbone fine-tuned on a source task first, the search chooses
between <backbone> and <backbone>+source, and says whether the source stage helped."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import autotransfer
from autotransfer.errors import UserError
from autotransfer.settings import SearchSettings
from autotransfer.source_stage import MARKER, SUFFIX, _finished, load_source, run_source_stage, stage_folder
from autotransfer.tasks import get_task
from conftest import NEGATIVE, POSITIVE, make_sentences

ENCODER_KEY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def nli_source(tmp_path_factory) -> Path:
    """Sentence pairs with three labels: the hypothesis agrees with the premise's sentiment, opposes it, or is
    neutral filler (a CSV with premise,hypothesis,label: the pair is detected as the shared SNLI's is)."""
    rng = random.Random(5)
    lines = ["premise,hypothesis,label"]
    for i, (sentence, polarity) in enumerate(make_sentences(240, 7, noise=0.0)):
        kind = ("entailment", "contradiction", "neutral")[i % 3]
        same, other = (POSITIVE, NEGATIVE) if polarity == "positive" else (NEGATIVE, POSITIVE)
        cue = {"entailment": rng.choice(same), "contradiction": rng.choice(other), "neutral": "the plot"}[kind]
        lines.append(f"{sentence},it was {cue},{kind}")
    path = tmp_path_factory.mktemp("nli") / "pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _space(tmp_path: Path, backbone: Path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(f"task: text-cls\nbackbones: [\"{backbone}\"]\nparams:\n  batch_size: [16]\n"
                 "strategies:\n  full:\n    lr: {distribution: loguniform, low: 2.0e-3, high: 6.0e-3}\n")
    return p


@pytest.mark.e2e
def test_the_search_chooses_between_a_backbone_and_its_source_stage(ray_session, sentiment_dir, nli_source,
                                                                    tiny_bert, tmp_path):
    out = tmp_path / "run"
    kwargs = dict(task="text-cls", data=sentiment_dir, space=_space(tmp_path, tiny_bert), source_data=nli_source,
                  max_epochs=1, min_steps=0, seed=0, dashboard=False, soup=False, output=out)
    result = autotransfer.search(num_samples=2, **kwargs)
    meta = json.loads((out / "results.json").read_text())
    stage = meta["source_stage"]["stages"][0]
    assert (stage["backbone"], stage["name"]) == (str(tiny_bert), str(tiny_bert) + SUFFIX)
    assert stage["labels"] == ["contradiction", "entailment", "neutral"] and not stage["reused"]
    assert 0.0 <= stage["validation_metric"] <= 1.0 and stage["steps"] > 0
    folder = Path(stage["folder"])
    assert folder == stage_folder(out, str(tiny_bert)) and (folder / MARKER).is_file()
    # a standard transformers folder, fine-tuned on the source task: its encoder moved away from the plain one's
    saved = load_file(str(folder / "model.safetensors"))
    plain = load_file(str(Path(tiny_bert) / "model.safetensors"))
    assert not torch.equal(saved[ENCODER_KEY], plain[ENCODER_KEY.removeprefix("bert.")])
    # both backbones were searched (the recipe runs on each) and the run says what the stage changed
    assert meta["space"]["backbones"] == [str(tiny_bert), str(tiny_bert) + SUFFIX]
    assert {r.backbone for r in result.records} == {str(tiny_bert), str(tiny_bert) + SUFFIX}
    row = meta["source_stage"]["comparison"][0]
    assert row["backbone"] == str(tiny_bert) and row["gain"] == pytest.approx(row["with"] - row["without"])
    assert meta["backbones"][str(tiny_bert) + SUFFIX]["source_stage"]["folder"] == str(folder)
    page = (out / "leaderboard.html").read_text()
    assert "source stage" in page and ("helped" in page or "did not help" in page or "no change" in page)

    # the stage asked again (a resume, a rerun into the same folder) is reused instead of trained again
    before = (folder / "model.safetensors").stat().st_mtime_ns
    settings = SearchSettings.build(num_samples=1, overwrite=True, **kwargs)
    said: list[str] = []
    task = get_task("text-cls")
    again = run_source_stage(task, {str(tiny_bert): task.describe_backbone(str(tiny_bert), settings)},
                             load_source(settings), settings, said.append)[0]
    assert again.reused and again.validation_metric == stage["validation_metric"] and "reused" in said[0]
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_a_resumed_run_refuses_a_source_stage_trained_on_other_data(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"key": {"data": "old"}, "result": {}}))
    assert _finished(folder, {"data": "new"}, resume=False, name="m") is None  # a new run just trains it again
    with pytest.raises(UserError, match="trained on other source data"):
        _finished(folder, {"data": "new"}, resume=True, name="m")


def test_source_options_are_the_task_options_of_the_source_data(sentiment_dir, nli_source, tiny_space):
    s = SearchSettings.build(task="text-cls", data=sentiment_dir, space=tiny_space, source_data=nli_source,
                             source_text_pair_col="hypothesis", text_col="sentence")
    assert s.source_options == {"text_pair_col": "hypothesis"} and s.options == {"text_col": "sentence"}
    with pytest.raises(UserError, match="it is the --data itself"):
        SearchSettings.build(task="text-cls", data=sentiment_dir, space=tiny_space, source_data=sentiment_dir)
    with pytest.raises(UserError, match="--source-image-col: text-cls has no such option"):
        SearchSettings.build(task="text-cls", data=sentiment_dir, space=tiny_space, source_data=nli_source,
                             source_image_col="path")
