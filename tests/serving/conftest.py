"""A real Sightline server on loopback, serving a small int8 model from a model repository."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.api.server import create_server
from serving.config import ServerConfig
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.repository.publish import deploy
from tests.conftest import encode

MODEL = "gap"  # the deployed model's name (the artifact's card name)


@pytest.fixture
def repository(deployable, tmp_path):
    """models/gap/1/ holding the session's small int8 GAP-head model."""
    models = tmp_path / "models"
    deploy(deployable("gap"), models)
    return models


@pytest.fixture
def start_server(tmp_path):
    """start_server(models_dir, **settings) -> a started Server on a free loopback port."""
    servers = []

    def start(models, **settings):
        settings = {"host": "127.0.0.1", "poll_seconds": 0.1, "workers": 2, "metrics_port": 0,
                    "metrics_host": "127.0.0.1", **settings}
        config = ServerConfig(model_repository=str(models), **settings)
        server = create_server(config, port=0)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=1.0, drain=0)


SHARED_LIMITS = {"max_image_bytes": 512 * 1024, "max_message_bytes": 1024 * 1024}


@pytest.fixture(scope="module")
def shared_server(deployable, tmp_path_factory):
    """One server for a module's many small requests: 1 MiB messages, 512 KiB images."""
    models = tmp_path_factory.mktemp("shared") / "models"
    deploy(deployable("gap"), models)
    server = create_server(ServerConfig(model_repository=str(models), host="127.0.0.1",
                                        workers=1, metrics_port=-1, **SHARED_LIMITS), port=0)
    server.start()
    yield server
    server.stop(grace=1.0, drain=0)


@pytest.fixture(scope="module")
def shared_channel(shared_server):
    with grpc.insecure_channel(f"127.0.0.1:{shared_server.port}") as channel:
        yield channel


@pytest.fixture
def server(repository, start_server):
    return start_server(repository)


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return pb_grpc.ImageClassifierStub(channel)


def image_bytes(seed: int = 0, size: int = 40, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(pixels, fmt)


def classify_request(**fields) -> pb.ClassifyRequest:
    fields.setdefault("image", image_bytes())
    return pb.ClassifyRequest(**fields)


MAX_ERROR_CHARS = 400  # an error message stays short whatever the client sent


@contextlib.contextmanager
def expect_error(code: grpc.StatusCode, phrase: str):
    with pytest.raises(grpc.RpcError) as caught:
        yield caught
    details = caught.value.details() or ""
    assert caught.value.code() == code, details
    assert phrase.lower() in details.lower(), details
    assert len(details) <= MAX_ERROR_CHARS, details[:MAX_ERROR_CHARS]


def with_settings(server, **settings) -> ServerConfig:
    return dataclasses.replace(server.config, **settings)


def broken_copy(artifact, tmp_path):
    """A copy of a real artifact whose model.tflite is cut in half, its card's sha256 updated
    to match: every check short of loading the model passes."""
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    model = broken / "model.tflite"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    card = json.loads((broken / "card.json").read_text())
    card["files"]["model.tflite"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (broken / "card.json").write_text(json.dumps(card))
    return broken


def scrape(server, token: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value}"""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for_version(stub, version, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).version == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"version {version} was not served within {timeout}s")
