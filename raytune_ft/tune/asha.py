"""ASHA that remembers across a restored sweep.

Ray Tune pickles the scheduler as it was built and never saves its state, so a sweep continued with
``Tuner.restore`` starts with empty rungs: trials that finished before the interruption no longer
count, and a hopeless trial that starts afterwards is never stopped. Here each trial Tune adds
replays the results it already reported (its ``result.json``) into its bracket, so the rungs are
what they were before the interruption. A new trial has no results yet and replays nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from ray.tune.schedulers import ASHAScheduler

__all__ = ["ResumableASHA", "reported_results"]

RESULT_FILE = "result.json"


def reported_results(trial: Any) -> Iterator[Mapping[str, Any]]:
    """The results ``trial`` reported in an earlier run of the sweep, oldest first; none for a new trial."""
    storage = getattr(trial, "storage", None)
    if storage is None or not storage.trial_dir_name:  # a new trial: Tune names its folder when it starts
        return
    try:
        with storage.storage_filesystem.open_input_stream(f"{storage.trial_fs_path}/{RESULT_FILE}") as stream:
            text = stream.readall().decode("utf-8")
    except (FileNotFoundError, OSError):
        return
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


class ResumableASHA(ASHAScheduler):
    """:class:`ASHAScheduler` whose rungs survive ``Tuner.restore``: see the module docstring."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        bracket, metric = self._trial_info[trial.trial_id], str(self._metric)
        for result in reported_results(trial):
            if self._time_attr in result and result.get(metric) is not None:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[metric])
