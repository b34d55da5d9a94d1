"""Ray Tune's saved experiment state: what it says about each trial, and mending what a crash left behind.

Ray Tune snapshots the experiment (``tune/experiment_state-<stamp>.json``) about once a second;
``Tuner.restore`` resumes from the latest snapshot.  Two things in it matter here:

- each trial's status: a trial the snapshot does not hold as ``TERMINATED``/``ERROR`` runs again on
  resume, so results call a trial finished only once the snapshot does (:func:`saved_trial_statuses`);
- each trial's latest checkpoint, which a resumed trial restarts from.  Ray deletes a trial's older
  checkpoint (``num_to_keep=1``) as soon as it registers the next one, but writes the snapshot that names
  the new one up to a second later.  A machine that dies in between leaves a snapshot naming a checkpoint
  that is gone, and Ray then fails that trial on resume ("Could not recover from checkpoint as it does
  not exist on storage anymore") instead of continuing it.  :func:`mend_missing_checkpoints` puts the
  newer checkpoint (which was fully written before Ray registered it) where the snapshot looks.

The layout read here is the one this Ray version writes (2.x: ``trial_data`` is a list of
``[trial_state_json, run_metadata_json]``); anything else reads as "no state" and nothing is changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

from autotransfer.checkpoints import PREDICTIONS_FILE, STATE_FILE, WEIGHTS_FILE

#: statuses after which Ray does not run a trial again on resume
FINAL_STATUSES = ("TERMINATED", "ERROR")
_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")
#: the files every checkpoint of autotransfer.checkpoints holds
_REQUIRED = (WEIGHTS_FILE, PREDICTIONS_FILE, STATE_FILE)


def trial_dirname(trial: Any) -> str:
    """A trial's folder name, from the trial or its id (Ray's default name embeds the whole config)."""
    return f"trial_{getattr(trial, 'trial_id', trial)}"


@dataclasses.dataclass(frozen=True)
class SavedTrial:
    """One trial as the latest snapshot holds it."""

    trial_id: str
    status: str
    #: the folder name of its latest checkpoint (``checkpoint_000003``), None before its first
    checkpoint: Optional[str]


def saved_trials(tune_location: str) -> Optional[list[SavedTrial]]:
    """The trials of the latest snapshot under ``tune_location``; None when there is none yet or it is unreadable."""
    import pyarrow.fs

    from autotransfer.storage import open_location

    try:
        fs, root = open_location(tune_location)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
        states = sorted(i.path for i in infos
                        if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
        if not states:
            return None
        with fs.open_input_stream(states[-1]) as f:  # the session stamp in the name sorts by time
            saved = json.loads(f.read())
        trials = []
        for trial_state, metadata in saved["trial_data"]:
            trial, last = json.loads(trial_state), json.loads(metadata).get("last_result") or {}
            named = last.get("checkpoint_dir_name")
            trials.append(SavedTrial(str(trial["trial_id"]), str(trial["status"]),
                                     str(named) if named and _CHECKPOINT.match(str(named)) else None))
        return trials
    except Exception:  # noqa: BLE001 - unreadable or a different layout
        return None


def saved_trial_statuses(tune_location: str) -> Optional[dict[str, str]]:
    """Trial id -> status in Ray Tune's latest saved experiment state under ``tune_location`` (None: no state)."""
    trials = saved_trials(tune_location)
    return None if trials is None else {t.trial_id: t.status for t in trials}


def _complete(fs: Any, folder: str) -> bool:
    """Whether a checkpoint folder holds every file a checkpoint is written with, none empty."""
    import pyarrow.fs

    for name in _REQUIRED:
        info = fs.get_file_info(f"{folder}/{name}")
        if info.type != pyarrow.fs.FileType.File or not info.size:
            return False
    return True


def mend_missing_checkpoints(tune_location: str) -> list[str]:
    """Before a resume: for each unfinished trial whose saved latest checkpoint is gone, move the trial's
    newest complete checkpoint to that name; then remove the checkpoints newer than the saved one, which
    Ray never registered.  Returns the ids of the trials whose checkpoint was put back.

    The trial then continues from one evaluation later than the snapshot knows of; Ray's iteration
    counter for it stays one behind its evaluations (its status and results are the trial's own).
    """
    import pyarrow.fs

    from autotransfer.storage import open_location

    trials = saved_trials(tune_location)
    if not trials:
        return []
    fs, root = open_location(tune_location)
    mended = []
    for trial in trials:
        if trial.status in FINAL_STATUSES or trial.checkpoint is None:
            continue
        folder, named = f"{root}/{trial_dirname(trial.trial_id)}", trial.checkpoint
        index = int(_CHECKPOINT.match(named).group(1))  # type: ignore[union-attr]
        newer = sorted(
            (int(m.group(1)), info.path)
            for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory and (m := _CHECKPOINT.match(info.base_name))
            and int(m.group(1)) > index)
        if fs.get_file_info(f"{folder}/{named}").type == pyarrow.fs.FileType.NotFound:
            usable = [path for _, path in newer if _complete(fs, path)]
            if not usable:
                continue  # nothing on storage to continue from: Ray fails the trial's restore, with its reason
            fs.move(usable[-1], f"{folder}/{named}")
            mended.append(trial.trial_id)
        for _, path in newer:  # checkpoints Ray never registered: its next ones will be written to these names
            if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
                fs.delete_dir(path)
    return mended
