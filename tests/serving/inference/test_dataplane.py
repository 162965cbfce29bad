"""The data plane alone, over fake models: no gRPC, no LiteRT, no metrics library."""

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from serving.batching.policy import BatchPolicy
from serving.errors import BadRequest, DeadlineExceeded, UnknownModel
from serving.inference import dataplane
from serving.inference.attachments import AttachingLoader
from serving.inference.dataplane import Inference
from serving.inference.types import Explain, Result
from serving.reference_stats import reference_stats
from serving.repository.manager import ModelManager
from tests.serving.repository.fakes import FakeModel, write_version


class Recorder:
    """An observer that keeps what it was told."""

    def __init__(self):
        self.done, self.batches, self.rejected = [], [], []
        self.lock = threading.Lock()

    def request_done(self, result, labels, input_bytes, input_pixels):
        self.done.append((result.model_name, result.model_version, result.request_id))

    def rejected_request(self, reason, error_type):
        self.rejected.append(reason)

    def batch(self, model, version, size):
        with self.lock:
            self.batches.append((model, version, size))

    def late_results(self, model, version, count):
        pass


def png(size=16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def plane(tmp_path):
    reference = reference_stats(np.array([[0.6, 0.4], [0.3, 0.7]]), np.zeros((2, 4, 4, 3)))
    paths = {v: write_version(tmp_path, "pets", v, reference=reference) for v in (1, 2)}
    observer = Recorder()
    opened = []

    def open_model(path):
        opened.append(FakeModel(path))
        return opened[-1]

    loader = AttachingLoader(open_model, BatchPolicy(workers=2, max_queue_delay_s=0),
                             observer=observer, drift=(100, 1))
    manager = ModelManager(loader=loader)
    manager.set_aspired("pets", paths, {"stable": 1})
    inference = Inference(manager, observer=observer)
    yield inference, manager, observer, opened
    assert manager.close(5)


def run(inference, **request) -> Result:
    return inference.finish(inference.submit(image=png(), **request))[0]


def test_every_request_gets_an_id_before_decode_and_keeps_it(plane):
    inference, _, observer, _ = plane
    given = run(inference, request_id="client-7")
    made = run(inference)
    assert given.request_id == "client-7"
    assert len(made.request_id) == 32 and made.request_id != given.request_id
    assert [d[2] for d in observer.done] == ["client-7", made.request_id]
    with pytest.raises(BadRequest, match="request id is 129 characters"):
        inference.submit(request_id="x" * 129, image=b"not even an image")


def test_a_label_and_a_version_each_pick_their_servable(plane):
    inference, _, observer, _ = plane
    assert run(inference).model_version == 2  # the newest
    assert run(inference, label="stable").model_version == 1
    assert run(inference, version=1).model_version == 1
    with pytest.raises(BadRequest, match="version or a label, not both"):
        run(inference, version=1, label="stable")
    with pytest.raises(UnknownModel, match="no label 'canary'"):
        run(inference, label="canary")
    assert observer.done[:3] == [("pets", 2, observer.done[0][2]), ("pets", 1, observer.done[1][2]),
                                 ("pets", 1, observer.done[2][2])]
    assert {(m, v) for m, v, _ in observer.batches} == {("pets", 1), ("pets", 2)}


def test_each_version_is_attached_its_batcher_and_drift_and_drift_is_fed(plane):
    inference, manager, _, _ = plane
    for _ in range(3):
        run(inference, version=1)
    first, second = manager.get("pets", 1), manager.get("pets", 2)
    assert first.batcher is not second.batcher
    assert first.drift.snapshot()["window_size"] == 3  # with no metrics at all
    assert second.drift.snapshot()["window_size"] == 0


def test_what_serves_is_warmed_in_both_signatures_and_nothing_idles(plane):
    """The defect: the loader warmed an interpreter that never served, and the workers warmed
    only classify, so each worker's first explain batch paid its allocation."""
    inference, manager, _, opened = plane
    assert len(opened) == 4  # two versions, two workers each: no fifth, idle interpreter
    for model in opened:
        assert model.cam_calls >= 1 and 1 in model.classify_batches
    assert manager.get("pets", 1).warmup_seconds > 0
    result = run(inference, explain=Explain(method="gradcam", raw=True))
    assert result.heatmap.raw.shape == (4, 4) and result.heatmap.target in (0, 1)


def test_a_batch_hands_back_named_outputs(plane):
    inference, manager, _, _ = plane
    pending = inference.submit(image=png(), explain=Explain(raw=True, png=False))
    output = pending.future.result(5)
    assert output.cam.shape == (2, 2) and output.probabilities.shape == (2,)
    assert output.queue_seconds >= 0 and output.inference_seconds >= 0
    result, top_k = inference.finish(pending)
    assert top_k == 2 and result.heatmap.png is None


def test_no_image_is_decoded_once_its_deadline_has_passed(plane, monkeypatch):
    """A free decode slot is no reason to decode a request its client gave up on: waiting
    zero seconds for a slot still takes one."""
    inference, *_ = plane
    decoded = []
    monkeypatch.setattr(dataplane, "decode", lambda *args: decoded.append(args))
    with pytest.raises(DeadlineExceeded, match="deadline passed before the image"):
        inference.submit(image=png(), deadline=time.monotonic() - 0.001)
    assert decoded == []


def test_made_ids_are_unique_in_a_process_and_across_a_fork():
    import os

    from serving.inference.types import request_id_for

    made = [request_id_for() for _ in range(10_000)]
    assert len(set(made)) == len(made) and all(len(i) == 32 and int(i, 16) >= 0 for i in made)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # a worker of --processes: its ids must not repeat its siblings'
        os.write(write_end, request_id_for().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        theirs = pipe.read()
    assert len(theirs) == 32 and theirs[:16] != made[0][:16] and theirs not in made
