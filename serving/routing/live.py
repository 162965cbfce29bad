"""Experiments kept current in a running server: the file reloaded, decisions taken on a timer.

``LiveExperiments.build(config)`` makes the process's ``Router`` from the server config: the
experiments file (``experiments_file``, else ``<model_repository>/experiments.yaml`` when it
exists), the state directory next to the repository (``<model_repository>/.experiments/``)
and the feedback key (``feedback_key_file``, else a key made for this process only, which the
log says: ids it signs are then refused by other replicas and after a restart).
``start`` runs one daemon thread that, every ``decide_seconds``, re-reads the file when it
changed (a bad file keeps the last good experiments, and the log says why) and steps the
router's decisions; ``stop`` ends it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from serving.routing.experiment import ExperimentFile
from serving.routing.feedback import FeedbackKey, FeedbackKeys
from serving.routing.router import Router
from serving.routing.state import StateStore

__all__ = ["EXPERIMENTS_FILE", "STATE_DIRECTORY", "LiveExperiments", "where_experiments_live"]

log = logging.getLogger("sightline.routing")
EXPERIMENTS_FILE = "experiments.yaml"
STATE_DIRECTORY = ".experiments"  # a dot name: the repository scanner skips it


def where_experiments_live(config) -> tuple[Path | None, StateStore | None]:
    """The experiments file and the state store a server with ``config`` uses, when it has."""
    repository = None if config.model_dir else Path(config.model_repository)
    path = (Path(config.experiments_file) if config.experiments_file
            else repository / EXPERIMENTS_FILE if repository is not None else None)
    return path, StateStore(repository / STATE_DIRECTORY) if repository is not None else None


class LiveExperiments:
    def __init__(self, router: Router, file: ExperimentFile | None, decide_seconds: float):
        self.router = router
        self.file = file
        self.decide_seconds = decide_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def build(cls, config, feedback_key: FeedbackKey | None = None,
              shared: bool = False) -> LiveExperiments:
        path, store = where_experiments_live(config)
        if feedback_key is not None:
            keys = FeedbackKeys(feedback_key)
        elif config.feedback_key_file:
            keys = FeedbackKeys(FeedbackKey.from_file(config.feedback_key_file))
        else:
            keys = FeedbackKeys(FeedbackKey.generate())
        live = cls(Router(keys, store, shared=shared),
                   ExperimentFile(path) if path else None,
                   config.decide_seconds)
        live.reload()
        if live.router.experiments() and not config.feedback_key_file:
            log.warning("experiments run without feedback_key_file: request ids are signed with "
                        "a key of this process only, so other replicas and a restart refuse "
                        "their labels")
        return live

    def reload(self) -> None:
        if self.file is not None and self.file.poll():
            self.router.set_experiments(self.file.current)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="experiments", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.decide_seconds):
            try:
                self.reload()
                self.router.step()
            except Exception:  # a bad step must not end the experiments; the next may work
                log.exception("deciding experiments failed")
