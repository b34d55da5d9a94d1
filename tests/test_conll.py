"""Reading token-tagged sentences (NER): CoNLL and JSON lines, IOB1 -> IOB2, one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from autotransfer.conll import read_conll, read_jsonl, read_tagged_splits, tag_names, to_iob2
from autotransfer.errors import UserError

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "conll2003"


def test_iob1_becomes_iob2_and_iob2_is_left_alone():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    assert to_iob2(iob1) == (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"], 3)
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert to_iob2(iob2) == (iob2, 0)


def test_conll_reads_tabs_spaces_docstart_and_the_last_column(tmp_path):
    f = tmp_path / "train.conll"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n"
                 "Peter\tB-PER\nBlackburn\tI-PER\n\n\n")
    s = read_conll(f)
    assert s.tokens == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert s.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]] and s.converted == 1  # the IOB1 I-ORG opened an entity
    assert s.lines == [3, 6]


@pytest.mark.parametrize("text,needle", [
    ("EU\tB-ORG\nrejects\tO\nGerman\n", "train.tsv:3: this file mixes lines with a tag column and lines without"),
    ("EU\nrejects\n", "train.tsv:1: no tag column"),
    ("EU\tB-ORG\nrejects\tVERB\n", "train.tsv:2: tag 'VERB' is not BIO"),
    ("EU\tU-ORG\n", "train.tsv:1: tag 'U-ORG' is not BIO"),
])
def test_bad_conll_names_the_file_line_and_tag(tmp_path, text, needle):
    f = tmp_path / "train.tsv"
    f.write_text(text)
    with pytest.raises(UserError, match=needle):
        read_conll(f)


def test_jsonl_sentences_and_their_errors(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"tokens": ["Paris", "is", "big"], "tags": ["I-LOC", "O", "O"]}) + "\n\n"
                 + json.dumps({"tokens": [], "tags": []}) + "\n")
    s = read_jsonl(f)
    assert s.tokens == [["Paris", "is", "big"]] and s.tags == [["B-LOC", "O", "O"]]
    for row, needle in (({"tokens": ["a"]}, "no \"tags\" list"), ({"tokens": ["a", "b"], "tags": ["O"]}, "equal length"),
                        ({"tokens": ["a"], "tags": ["X"]}, "tag 'X' is not BIO")):
        f.write_text(json.dumps({"tokens": ["ok"], "tags": ["B-PER"]}) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(UserError, match=f"train.jsonl:2: .*{needle}"):
            read_jsonl(f)


def test_a_folder_gives_splits_and_the_tag_set_comes_from_train(tmp_path):
    (tmp_path / "train.tsv").write_text("Ann\tB-PER\nsings\tO\n\nin\tO\nRome\tB-LOC\n")
    (tmp_path / "dev.tsv").write_text("Bob\tB-PER\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"tokens": ["Rome"], "tags": ["B-LOC"]}) + "\n")
    splits, files = read_tagged_splits(tmp_path)
    assert set(splits) == {"train", "validation", "test"} and files["validation"].endswith("dev.tsv")
    assert tag_names(splits["train"], [splits["validation"], splits["test"]]) == ["O", "B-LOC", "I-LOC", "B-PER",
                                                                                   "I-PER"]
    (tmp_path / "test.jsonl").write_text(json.dumps({"tokens": ["IBM"], "tags": ["B-ORG"]}) + "\n")
    splits, _ = read_tagged_splits(tmp_path)
    with pytest.raises(UserError, match="ORG appear outside the training split"):
        tag_names(splits["train"], [splits["test"]])


def test_data_without_any_entity_is_refused(tmp_path):
    f = tmp_path / "all-o.tsv"
    f.write_text("nothing\tO\nhere\tO\n")
    with pytest.raises(UserError, match="no entity tags in any split"):
        read_tagged_splits(f)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_the_shared_conll2003_reads_with_its_published_counts():
    splits, _ = read_tagged_splits(SHARED)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [14041, 3250, 3453]
    mentions = Counter(t[2:] for sent in splits["train"].tags for t in sent if t.startswith("B-"))
    assert mentions == {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}  # its README's counts
    assert sum(len(t) for t in splits["train"].tokens) == 203621 and splits["train"].converted == 0
