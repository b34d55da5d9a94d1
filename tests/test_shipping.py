"""Local backbone folders on a cluster: used in place where every node sees them, shipped otherwise."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from autotransfer.errors import UserError
from autotransfer.shipping import ShippedFolder, folder_fingerprint, plan_folders, use_local_folders
from autotransfer.tasks import BackboneInfo


def _bb(name, source):
    return BackboneInfo(name=name, source=source, num_layers=2)


def test_folder_seen_by_every_node_is_used_in_place(tiny_bert):
    fp = folder_fingerprint(tiny_bert)
    shipped, lines = plan_folders([_bb("tiny", str(tiny_bert)), _bb("bert-base-uncased", "bert-base-uncased")],
                                  probe=lambda path: {"node-a": fp, "node-b": fp}, ship=lambda files: 1 / 0)
    assert shipped == {}
    assert "found on all 2 node(s), used in place" in lines[0]
    assert "hub model" in lines[1]


def test_folder_missing_on_a_node_is_shipped_and_loads_from_the_copy(tiny_bert, text_ctx, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    fp = folder_fingerprint(tiny_bert)
    name = next(iter(text_ctx.backbones))
    info = text_ctx.backbones[name]
    shipped, lines = plan_folders([info], probe=lambda path: {"node-a": fp, "node-b": None}, ship=lambda files: files)
    assert "missing or different on 1 of 2 node(s); shipped through the object store" in lines[0]
    folder = shipped[name]
    assert folder.fingerprint == fp and "config.json" in folder.files

    # on a node without the folder (here: the path moved away), the trial writes the shipped copy and uses it
    moved = tmp_path / "moved"
    shutil.copytree(tiny_bert, moved)
    elsewhere = dataclasses.replace(folder, source=str(tmp_path / "not-on-this-node"))
    monkeypatch.setenv("AUTOTRANSFER_CACHE", str(tmp_path / "cache"))
    ctx = dataclasses.replace(text_ctx, shipped={name: elsewhere})
    local = use_local_folders(ctx, name)
    copy = local.backbones[name].source
    assert copy.startswith(str(tmp_path / "cache"))
    assert folder_fingerprint(copy) is not None
    model = AutoModelForSequenceClassification.from_pretrained(copy, num_labels=2)
    assert model.config.num_hidden_layers == 2
    # a second trial on the node reuses the copy
    assert use_local_folders(ctx, name).backbones[name].source == copy
    # where the folder is present and equal, nothing is copied
    same = dataclasses.replace(text_ctx, shipped={name: ShippedFolder(info.source, fp, folder.files, 0)})
    assert use_local_folders(same, name).backbones[name].source == info.source


def test_folder_too_large_to_ship_is_refused_up_front(tiny_bert, monkeypatch):
    monkeypatch.setattr("autotransfer.shipping.SHIP_LIMIT_BYTES", 10)
    with pytest.raises(UserError, match="too large to ship .* put it on storage every node mounts"):
        plan_folders([_bb("tiny", str(tiny_bert))], probe=lambda path: {"a": None}, ship=lambda files: files)
