"""Reading text tables: formats, column detection, splits, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autotransfer.errors import UserError
from autotransfer.tables import load_text_splits
from conftest import make_sentences, write_tsv


def test_folder_with_train_dev_test_keeps_given_splits(sentiment_dir):
    s = load_text_splits(sentiment_dir)
    assert (len(s.train), len(s.validation), len(s.test)) == (480, 80, 80)
    assert s.label_names == ["negative", "positive"]
    assert s.source["columns"] == {"text": "sentence", "text_pair": None, "label": "label"}
    assert s.source["carved_splits"] == []


def test_single_csv_gets_seeded_stratified_validation_and_test(tmp_path):
    rows = make_sentences(200, 5, noise=0)
    path = tmp_path / "reviews.csv"
    path.write_text("review,category\n" + "".join(f'"{t}",{l}\n' for t, l in rows))
    a = load_text_splits(path, val_frac=0.1, test_frac=0.2, seed=3)
    b = load_text_splits(path, val_frac=0.1, test_frac=0.2, seed=3)
    assert (len(a.train), len(a.validation), len(a.test)) == (140, 20, 40)
    assert a.test.inputs == b.test.inputs  # seeded
    for split in (a.train, a.validation, a.test):  # stratified: both classes at the same share
        assert np.bincount(split.labels).tolist()[0] == len(split) // 2
    assert a.source["carved_splits"] == ["test", "validation"]


def test_jsonl_with_integer_labels_sorted_numerically(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 3 * 5}) + "\n" for i in range(60)))
    s = load_text_splits(path)
    assert s.label_names == ["0", "5", "10"]


def test_sentence_pairs_are_detected(tmp_path):
    path = tmp_path / "nli.tsv"
    lines = ["premise\thypothesis\tgold_label"] + [f"p {i}\th {i}\t{'yes' if i % 2 else 'no'}" for i in range(40)]
    path.write_text("\n".join(lines) + "\n")
    s = load_text_splits(path)
    assert s.source["columns"]["text_pair"] == "hypothesis"
    assert s.train.pairs is not None and len(s.train.pairs) == len(s.train)


def test_explicit_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c\n" + "".join(f"x{i},t{i},{i % 2}\n" for i in range(30)))
    s = load_text_splits(path, text_col="b", label_col="c")
    assert s.source["columns"]["text"] == "b"


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("sentence,label\n", "no rows"),
    ("sentence,stars\nhello,1\nbye,2\n", "no label column"),
    ("sentence,label\n" + "hello,pos\n" * 20, "single class"),
    ("sentence,label\nhello,pos\nbye,\nok,neg\n", "blank label"),
    ("sentence,label\n" + "a,x\nb,x\nc,x\nd,y\n", "single example"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_text_splits(path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_labels_only_in_test_are_refused(tmp_path):
    write_tsv(tmp_path / "train.tsv", [("a b", "pos"), ("c d", "neg")] * 5)
    write_tsv(tmp_path / "test.tsv", [("e f", "pos"), ("g h", "neutral")])
    write_tsv(tmp_path / "dev.tsv", [("e f", "pos"), ("g h", "neg")])
    with pytest.raises(UserError, match="'neutral' appear in the test split but never in train"):
        load_text_splits(tmp_path)


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("sentence,label\ncaf\xe9 cr\xe8me,1\nok,0\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_text_splits(path)


def test_folder_without_train_file(tmp_path):
    write_tsv(tmp_path / "dev.tsv", [("a", "x")])
    with pytest.raises(UserError, match="no train file"):
        load_text_splits(tmp_path)
