"""Where a run's results and checkpoints live: a folder (local or shared) or a URI.

``--storage FOLDER`` makes ``FOLDER/<run-name>`` the run folder: Ray Tune writes trial
state and checkpoints there and the driver writes results, report and ``best/`` next to
them, so on a cluster nothing depends on the driver's disk as long as FOLDER is shared
(NFS, a mounted bucket...).

``--storage URI`` (``s3://``, ``gs://``, ``file://``, anything pyarrow's filesystems
open, as Ray Tune supports): Ray Tune writes trial state and checkpoints to
``URI/<run-name>/tune``; the driver builds results, report and ``best/`` in its local
``--output`` folder, reading the best checkpoint from the URI, and uploads them to
``URI/<run-name>/`` when the search ends (finished, interrupted or failed).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from autotransfer.errors import UserError
from autotransfer.settings import GALLERY_DIR, STUDY_FILE, TUNE_DIR, SearchSettings, is_uri

#: what the driver writes into a run folder besides Ray Tune's ``tune/``
RUN_FILES = ("settings.json", "results.json", "results.csv", "leaderboard.html", "test_metrics.json", "best",
             STUDY_FILE, GALLERY_DIR)
#: pyarrow filesystem type names -> URI schemes
_SCHEMES = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI; a one-line error when it cannot be opened."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; the user needs one line
        raise UserError(f"--storage {uri}: cannot open it ({str(exc).splitlines()[0]})") from None


def check_target(settings: SearchSettings) -> None:
    """Refuse a storage URI that already holds a run named like this one (unless overwrite/resume)."""
    if not settings.storage_is_uri or settings.resume:
        return
    import pyarrow.fs

    fs, root = filesystem(settings.tune_storage)
    try:
        info = fs.get_file_info(root)
        taken = info.type != pyarrow.fs.FileType.NotFound and any(
            fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.NotFound for name in (TUNE_DIR, "results.json"))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--storage {settings.storage}: cannot read it ({str(exc).splitlines()[0]})") from None
    if taken and not settings.overwrite:
        raise UserError(f"--storage: {settings.tune_storage} already holds a run; pass --overwrite or another "
                        "--run-name")
    if taken:
        fs.delete_dir(root)


def upload_run(settings: SearchSettings) -> Optional[str]:
    """Copy the driver's run files to ``<storage URI>/<run-name>/``; returns where they went."""
    if not settings.storage_is_uri:
        return None
    import pyarrow.fs

    fs, root = filesystem(settings.tune_storage)
    local = pyarrow.fs.LocalFileSystem()
    out = Path(settings.output)  # type: ignore[arg-type]
    fs.create_dir(root, recursive=True)
    for name in RUN_FILES:
        src = out / name
        if src.is_dir():
            fs.create_dir(f"{root}/{name}", recursive=True)
            pyarrow.fs.copy_files(str(src), f"{root}/{name}", source_filesystem=local, destination_filesystem=fs)
        elif src.is_file():
            pyarrow.fs.copy_files(str(src), f"{root}/{name}", source_filesystem=local, destination_filesystem=fs)
    return settings.tune_storage


def checkpoint_location(checkpoint: Any) -> str:
    """A ``ray.tune.Checkpoint``'s location as a local path or a URI (for records and export)."""
    import pyarrow.fs

    fs = getattr(checkpoint, "filesystem", None)
    if fs is None or isinstance(fs, pyarrow.fs.LocalFileSystem):
        return str(checkpoint.path)
    scheme = _SCHEMES.get(fs.type_name, fs.type_name)
    return f"{scheme}://{str(checkpoint.path).lstrip('/')}"


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A local folder holding the checkpoint at ``location`` (downloaded first when it is a URI)."""
    if not is_uri(location):
        yield Path(location)
        return
    import pyarrow.fs

    fs, path = filesystem(location)
    with tempfile.TemporaryDirectory(prefix="autotransfer-ckpt-") as tmp:
        pyarrow.fs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(tmp)


def open_location(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a URI or a plain local path."""
    if is_uri(location):
        return filesystem(location)
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem(), str(Path(location).resolve())


def folder_bytes(location: str) -> Optional[int]:
    """Total size of the files under a folder, local or remote (None if it cannot be read)."""
    import pyarrow.fs

    try:
        fs, path = open_location(location)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
        return sum(i.size or 0 for i in infos if i.type == pyarrow.fs.FileType.File)
    except Exception:  # noqa: BLE001 - a size is informative only
        return None


def prune_checkpoints(tune_location: str, keep: Optional[str]) -> None:
    """Delete every trial checkpoint under ``tune_location`` but ``keep`` (bounded disk use)."""
    import pyarrow.fs

    fs, root = open_location(tune_location)
    keep_path = open_location(keep)[1].rstrip("/") if keep else None
    for trial in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if trial.type != pyarrow.fs.FileType.Directory:
            continue
        for item in fs.get_file_info(pyarrow.fs.FileSelector(trial.path)):
            if item.type == pyarrow.fs.FileType.Directory and item.base_name.startswith("checkpoint_") \
                    and item.path.rstrip("/") != keep_path:
                fs.delete_dir(item.path)
