"""--storage: folders become the run folder; URIs go through pyarrow (checked here with file://)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotransfer.errors import UserError
from autotransfer.settings import SearchSettings, is_uri
from autotransfer.storage import check_target, folder_bytes, local_copy, prune_checkpoints, upload_run


def _settings(data: Path, **kw) -> SearchSettings:
    return SearchSettings(task="text-cls", data=data, **kw)


def test_is_uri():
    assert is_uri("s3://bucket/runs") and is_uri("gs://b/x") and is_uri("file:///tmp/x")
    assert not is_uri("/mnt/shared/runs") and not is_uri("runs") and not is_uri("C:/x") and not is_uri("://x")


def test_storage_folder_is_where_the_run_goes(sentiment_dir, tmp_path):
    s = _settings(sentiment_dir, storage=str(tmp_path / "shared"), run_name="r1")
    assert s.output == (tmp_path / "shared" / "r1").resolve()
    assert s.tune_storage == str(s.output) and not s.storage_is_uri


def test_storage_folder_and_output_together_are_refused(sentiment_dir, tmp_path):
    with pytest.raises(UserError, match="--storage FOLDER already sets the run folder"):
        _settings(sentiment_dir, storage=str(tmp_path / "shared"), output=tmp_path / "out")


def test_storage_uri_stages_locally_and_names_the_remote_run(sentiment_dir, tmp_path):
    s = _settings(sentiment_dir, storage="s3://bucket/runs/", run_name="r2", output=tmp_path / "local")
    assert s.storage_is_uri and s.tune_storage == "s3://bucket/runs/r2"
    assert s.output == (tmp_path / "local").resolve()


def test_run_name_with_a_slash_is_refused_with_storage(sentiment_dir, tmp_path):
    with pytest.raises(UserError, match="--run-name"):
        _settings(sentiment_dir, storage=str(tmp_path), run_name="a/b")


def test_upload_copies_the_run_files_and_refuses_to_overwrite(sentiment_dir, tmp_path):
    remote = tmp_path / "bucket"
    s = _settings(sentiment_dir, storage=f"file://{remote}", run_name="r3", output=tmp_path / "local")
    check_target(s)  # nothing there yet
    out = Path(s.output)
    (out / "best").mkdir(parents=True)
    (out / "best" / "model.safetensors").write_bytes(b"x" * 10)
    (out / "results.json").write_text("{}")
    (out / "leaderboard.html").write_text("<html></html>")
    (out / "scratch.tmp").write_text("not a run file")
    assert upload_run(s) == f"file://{remote}/r3"
    assert (remote / "r3" / "best" / "model.safetensors").read_bytes() == b"x" * 10
    assert (remote / "r3" / "results.json").exists() and (remote / "r3" / "leaderboard.html").exists()
    assert not (remote / "r3" / "scratch.tmp").exists()
    with pytest.raises(UserError, match="already holds a run"):
        check_target(_settings(sentiment_dir, storage=f"file://{remote}", run_name="r3", output=tmp_path / "l2"))


def test_checkpoints_are_read_and_pruned_through_the_uri(tmp_path):
    tune = tmp_path / "bucket" / "run" / "tune"
    for trial in ("trial_a", "trial_b"):
        for c in ("checkpoint_000000", "checkpoint_000001"):
            (tune / trial / c).mkdir(parents=True)
            (tune / trial / c / "trainable.safetensors").write_bytes(b"w" * 100)
    keep = tune / "trial_b" / "checkpoint_000001"
    uri = f"file://{tune}"
    assert folder_bytes(f"file://{keep}") == 100 == folder_bytes(str(keep))
    with local_copy(f"file://{keep}") as d:
        assert (Path(d) / "trainable.safetensors").read_bytes() == b"w" * 100
    prune_checkpoints(uri, keep=f"file://{keep}")
    assert sorted(p.relative_to(tune).as_posix() for p in tune.glob("*/checkpoint_*")) == [
        "trial_b/checkpoint_000001"]


def test_local_checkpoints_are_pruned_in_place(tmp_path):
    for trial in ("trial_a", "trial_b"):
        (tmp_path / trial / "checkpoint_000000").mkdir(parents=True)
    prune_checkpoints(str(tmp_path), keep=str(tmp_path / "trial_a" / "checkpoint_000000"))
    assert [p.parent.name for p in tmp_path.glob("*/checkpoint_*")] == ["trial_a"]
