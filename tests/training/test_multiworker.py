"""Two real workers of MultiWorkerMirroredStrategy on loopback, as the Indexed Job's pods run.

Two processes on CPU, each with its TF_CONFIG, run the same command line the pods run and train
the shapes for one epoch in step over gRPC. They share one output directory, as the pods share
the artifact volume: the chief must write one complete artifact there, the other worker nothing.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from serving.card import load_card
from tests.conftest import ROOT
from training import cluster

pytestmark = pytest.mark.slow

# Measured: 20-45 s for both workers on two shared cores. A worker whose peer died can wait in
# its all-reduce for ever; this bounds the test.
TIMEOUT_S = 240
TRAIN = ["train", "--config", "training/configs/shapes.yaml", "--set", "strategy=multiworker",
         "--set", "epochs=1", "--set", "data.num_images=600", "--set", "model.width=8",
         "--set", "name=mw"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Both workers to the end; their exit codes, logs, pids and directories."""
    tmp = tmp_path_factory.mktemp("multiworker")
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    started = time.perf_counter()
    for index in range(2):
        scratch = tmp / f"tmp-{index}"  # each worker's TMPDIR, like the pod's emptyDir
        scratch.mkdir()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
               "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                        "task": {"type": "worker", "index": index}})}
        # Logs go to files: a worker blocked on a full pipe would stall its peer's all-reduce.
        stdout, stderr = (open(tmp / f"worker{index}.{kind}", "w") for kind in ("out", "err"))
        process = subprocess.Popen(
            [sys.executable, "-m", "training", *TRAIN, "--set", f"output_dir={tmp / 'artifacts'}"],
            cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        workers.append((process, stdout, stderr, scratch))
    try:
        codes = [process.wait(timeout=max(TIMEOUT_S - (time.perf_counter() - started), 1))
                 for process, *_ in workers]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for process, stdout, stderr, _ in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            stdout.close()
            stderr.close()
    seconds = time.perf_counter() - started
    if codes is None:
        tails = "\n".join(f"worker {i}:\n{(tmp / f'worker{i}.err').read_text()[-2000:]}"
                          for i in range(2))
        pytest.fail(f"the workers were still running after {TIMEOUT_S} s\n{tails}")
    print(f"two workers trained one epoch in {seconds:.1f} s")
    return {
        "codes": codes,
        "seconds": seconds,
        "pids": [process.pid for process, *_ in workers],
        "stdout": [(tmp / f"worker{i}.out").read_text() for i in range(2)],
        "stderr": [(tmp / f"worker{i}.err").read_text() for i in range(2)],
        "scratch": [scratch for *_, scratch in workers],
        "artifacts": tmp / "artifacts",
    }


def test_both_workers_exit_0(run):
    for index in range(2):
        assert run["codes"][index] == 0, f"worker {index}:\n{run['stderr'][index][-3000:]}"


def test_they_trained_in_step_as_two_replicas(run):
    assert "worker 0 of 2 (chief), 2 replicas in sync" in run["stderr"][0]
    assert "worker 1 of 2, 2 replicas in sync" in run["stderr"][1]
    assert "artifact written: " in run["stdout"][0]
    assert "this worker is not the chief" in run["stdout"][1]
    card = load_card(run["artifacts"] / "latest")
    assert card.training["strategy"] == "multiworker"
    assert card.training["workers"] == 2 and card.training["replicas_in_sync"] == 2


def test_the_chief_wrote_one_complete_artifact(run):
    runs = sorted(path.name for path in run["artifacts"].iterdir())
    assert len(runs) == 2 and runs[0] == "latest" and re.fullmatch(r"mw-\d{8}-\d{6}", runs[1])
    artifact = run["artifacts"] / runs[1]
    assert (run["artifacts"] / "latest").resolve() == artifact.resolve()
    assert f"artifact written: {artifact}" in run["stdout"][0]
    for name in ("model.keras", "card.json", "config.yaml", "history.csv", "history.json",
                 "checkpoint.weights.h5"):
        assert (artifact / name).is_file(), name
    card = load_card(artifact)  # checks the card's schema
    assert card.files["model.keras"].bytes == (artifact / "model.keras").stat().st_size
    assert card.training["epochs"] == 1
    assert len(json.loads((artifact / "history.json").read_text())["loss"]) == 1
    confusion = card.metrics["evaluation"]["confusion_matrix"]
    assert sum(map(sum, confusion)) == card.dataset["num_val"] == 60


def test_the_other_worker_wrote_nothing_there_and_cleaned_its_scratch(run):
    artifact = (run["artifacts"] / "latest").resolve()
    events = [path.name for path in (artifact / "logs").rglob("events.out.tfevents.*")]
    # TensorBoard names each event file after the process that wrote it.
    assert {"train", "validation"} <= {path.name for path in (artifact / "logs").iterdir()}
    assert events and all(f".{run['pids'][0]}." in name for name in events), events
    assert not any(f".{run['pids'][1]}." in name for name in events), events
    assert not list(run["scratch"][1].glob("sightline-worker1-*"))  # its copy is gone


def test_the_predictions_kept_their_order_across_workers(run, tmp_path):
    """predict() gathers each worker's part of every batch; the card's confusion matrix must be
    the one a single process computes from the saved model.

    Up to two images may move: after one epoch some sit within 0.001 of a tie between two
    classes, and a batch of 30 per worker is not computed bit for bit like a batch of 60. A
    wrong order moves far more (measured: 7 to 11 of the 60 for swapped halves, interleaved
    workers or random permutations).
    """
    import numpy as np

    from training.evaluate import evaluate_artifact

    copy = tmp_path / "artifact"
    shutil.copytree((run["artifacts"] / "latest").resolve(), copy)
    recorded = np.array(load_card(copy).metrics["evaluation"]["confusion_matrix"])
    recomputed = np.array(evaluate_artifact(copy)["confusion_matrix"])
    assert recorded.sum() == recomputed.sum() == 60
    moved = int(np.abs(recorded - recomputed).sum()) // 2
    assert moved <= 2, (recorded.tolist(), recomputed.tolist())


def test_tensorflow_reads_the_tf_config_built_for_a_pod(monkeypatch):
    """What the pods set (training.cluster) is what TensorFlow's resolver understands."""
    import tensorflow as tf

    environ = {"JOB_COMPLETION_INDEX": "1", "SIGHTLINE_TRAIN_WORKERS": "3",
               "SIGHTLINE_TRAIN_JOB_NAME": "sightline-train", "SIGHTLINE_TRAIN_SERVICE": "workers",
               "SIGHTLINE_TRAIN_NAMESPACE": "ml"}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster.tf_config_from_env(environ)))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.cluster_spec().as_dict() == {"worker": [
        f"sightline-train-{i}.workers.ml.svc:2222" for i in range(3)]}

