"""Word tags on sub-tokens: the first sub-token carries the tag, long sentences become windows."""

from __future__ import annotations

import numpy as np

from autotransfer.token_windows import IGNORE, tokenize_tagged, word_scores

SENTENCES = [["a", "great", "film"], ["the", "plot", "was", "dull", "and", "the", "acting", "was", "awful", "too"]]
TAGS = [[0, 1, 2], [0, 1, 2, 0, 0, 3, 4, 0, 0, 1]]


def test_each_word_is_labelled_once_at_its_first_sub_token(wordpiece):
    win = tokenize_tagged(wordpiece, SENTENCES, TAGS, max_length=64)
    assert len(win) == 2 and win.sentence == [0, 1]
    for w in range(len(win)):
        labelled = [lab for lab in win.labels[w] if lab != IGNORE]
        assert labelled == TAGS[win.sentence[w]]
        assert win.labels[w][0] == IGNORE and win.labels[w][-1] == IGNORE  # [CLS] and [SEP]


def test_a_long_sentence_becomes_windows_not_a_truncation(wordpiece):
    win = tokenize_tagged(wordpiece, SENTENCES, TAGS, max_length=6)
    assert len(win) > 2 and all(len(ids) <= 6 for ids in win.input_ids)
    labelled = {}
    for w in range(len(win)):
        for word, lab in zip(win.predicts[w], win.labels[w]):
            if word is not None:
                assert (win.sentence[w], word) not in labelled  # never labelled twice
                labelled[(win.sentence[w], word)] = lab
    assert labelled == {(s, i): t for s, tags in enumerate(TAGS) for i, t in enumerate(tags)}  # every word, once


def test_predictions_return_to_words_across_windows(wordpiece):
    win = tokenize_tagged(wordpiece, SENTENCES, TAGS, max_length=6)
    # scores that put all mass on the true label where one is given (padding past each window's end)
    scores = []
    for labels in win.labels:
        s = np.zeros((len(labels) + 3, 5))
        for pos, lab in enumerate(labels):
            s[pos, lab if lab != IGNORE else 0] = 1.0
        scores.append(s)
    words = word_scores(win, scores)
    assert [w.argmax(-1).tolist() for w in words] == TAGS
    untagged = tokenize_tagged(wordpiece, SENTENCES, None, max_length=6)  # new sentences, for predict
    assert untagged.predicts == win.predicts and all(lab == [] for lab in untagged.labels)


def test_a_word_the_tokenizer_drops_is_read_as_unknown_and_keeps_its_tag(wordpiece):
    win = tokenize_tagged(wordpiece, [["a", "\x07", "film"]], [[1, 2, 0]], max_length=16)  # a lone control character
    assert [lab for lab in win.labels[0] if lab != IGNORE] == [1, 2, 0]
    assert wordpiece.unk_token_id in win.input_ids[0]
