"""GGUF files (llama.cpp / Ollama's format) as text backbones, through the same path as Hugging Face folders."""

from __future__ import annotations

import io
import json

import pytest
import torch

import autotransfer
from autotransfer.errors import UserError
from autotransfer.tasks import get_task
from conftest import make_sentences, save_tiny_llama_gguf

TASK = get_task("text-cls")


class _S:
    trust_remote_code = False
    max_length = None


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tmp_path):
    path = tmp_path / "llama.gguf"
    original = save_tiny_llama_gguf(path, [t for t, _ in make_sentences(200, 0)], seed=4)
    info = TASK.describe_backbone(str(path), _S())
    assert info.source == str(path) and info.num_layers == 2
    assert info.details["gguf"]["architecture"] == "llama" and set(info.details["gguf"]["tensor_types"]) == {"F32"}
    bundle = TASK.build(info, ["negative", "positive"], {})
    assert type(bundle.model).__name__ == "LlamaForSequenceClassification" and bundle.head == ["score.weight"]
    assert bundle.lora_targets == ["q_proj", "v_proj"]  # peft's table for llama
    assert bundle.model.config.pad_token_id is not None  # batches pad with the end-of-text token
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():  # the same decoder: GGUF's names and llama.cpp's q/k row order undone on load
        torch.testing.assert_close(bundle.model.model(ids).last_hidden_state, original.model(ids).last_hidden_state)


def test_without_the_gguf_package_the_error_says_what_to_install(tiny_llama_gguf, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match=r"needs the gguf package .*pip install gguf"):
        TASK.describe_backbone(str(tiny_llama_gguf), _S())


@pytest.mark.e2e
def test_a_search_on_a_gguf_file_exports_a_standard_float_model(ray_session, sentiment_dir, tiny_llama_gguf,
                                                                 tmp_path):
    from rich.console import Console
    from transformers import pipeline

    space = tmp_path / "space.yaml"
    space.write_text(f'task: text-cls\nbackbones: ["{tiny_llama_gguf}"]\nparams:\n  batch_size: [16]\n'
                     "strategies:\n  lora:\n    lr: {distribution: loguniform, low: 5.0e-3, high: 2.0e-2}\n"
                     "    lora_r: [4]\n")
    said = io.StringIO()
    result = autotransfer.search(task="text-cls", data=sentiment_dir, space=space, num_samples=1, max_epochs=1,
                                 min_steps=0, seed=0, dashboard=False, soup=False, output=tmp_path / "run",
                                 console=Console(file=said, width=200))
    assert "GGUF file (llama" in said.getvalue() and "dequantised to float32" in said.getvalue()
    assert result.best is not None and result.best.backbone == str(tiny_llama_gguf)
    meta = json.loads((tmp_path / "run" / "results.json").read_text())
    assert meta["backbones"][str(tiny_llama_gguf)]["gguf"]["architecture"] == "llama"
    best = tmp_path / "run" / "best"
    assert (best / "model.safetensors").is_file() and not list(best.glob("*.gguf"))
    assert json.loads((best / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    clf = pipeline("text-classification", model=str(best), device=-1)
    texts = ["the film was great", "really awful plot with a very boring cast", "fun"]
    preds = clf(texts, batch_size=3)
    assert [p["score"] for p in preds] == pytest.approx([clf(t)[0]["score"] for t in texts], abs=1e-5)
