"""The client library and the sightline-classify command against a real server."""

import io
import re

import grpc
import pytest
from PIL import Image

from serving.client import SightlineClient, heatmap_path, main
from tests.serving.conftest import MODEL, image_bytes, samples, scrape, value

SERVICE = "sightline.classifier.v1.ImageClassifier"


def calls(server, method: str) -> float:
    return value(samples(scrape(server)), "grpc_server_started_total", grpc_type="unary",
                 grpc_service=SERVICE, grpc_method=method)


def test_cli_classifies_images_and_writes_heatmaps(server, tmp_path, capsys):
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.jpg")  # PNG bytes behind a .jpg name: sniffed
        images[-1].write_bytes(image_bytes(i))
    code = main([*map(str, images), "--target", f"127.0.0.1:{server.port}", "--top-k", "2",
                 "--heatmap", str(tmp_path / "out" / "heat.png"), "--wait", "10"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for image in images:
        assert f"{image}:" in printed
        overlay = Image.open(tmp_path / "out" / f"heat-{image.stem}.png")
        assert overlay.size == (32, 32)
    assert printed.count(f"[{MODEL} v1,") == 2
    assert (calls(server, "ClassifyBatch"), calls(server, "Classify")) == (1, 0)


def test_cli_prints_the_same_for_several_files_as_for_each_alone(server, tmp_path, capsys):
    images = []
    for i in range(3):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(image_bytes(i))
    target = ["--target", f"127.0.0.1:{server.port}", "--top-k", "3"]
    alone = []
    for image in images:
        assert main([str(image), *target]) == 0
        alone.append(capsys.readouterr().out)
    assert (calls(server, "ClassifyBatch"), calls(server, "Classify")) == (0, 3)
    assert main([*map(str, images), *target]) == 0
    together = capsys.readouterr().out
    assert calls(server, "ClassifyBatch") == 1
    timing = re.compile(r", [0-9.]+ ms\]")  # each answer's own server time
    assert timing.sub("", together) == timing.sub("", "".join(alone))


def test_cli_reports_a_bad_image_and_exits_non_zero(server, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    good = tmp_path / "good.png"
    good.write_bytes(image_bytes())
    missing = tmp_path / "missing.png"
    code = main([str(bad), str(missing), str(good), "--target", f"127.0.0.1:{server.port}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.png: INVALID_ARGUMENT" in captured.err and "good.png:" in captured.out
    assert f"missing.png: [Errno 2] No such file or directory: '{missing}'" in captured.err


def test_client_retries_unavailable_then_gives_up_quickly():
    client = SightlineClient("127.0.0.1:1", timeout=0.5, retries=2)  # nothing listens there
    with pytest.raises(grpc.RpcError) as caught:
        client.classify(image_bytes())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TimeoutError, match="not SERVING within 0.5s"):
        client.wait_until_serving(0.5)


def test_client_batch_splits_into_calls_and_answers_in_order(server):
    images = [image_bytes(i) for i in range(5)]
    images[3] = b"not an image"
    with SightlineClient(f"127.0.0.1:{server.port}") as client:
        responses = client.classify_batch(images, max_per_call=2, top_k=2, heatmap=True)
        assert calls(server, "ClassifyBatch") == 3
        assert len(responses) == 5
        assert responses[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        for i in (0, 1, 2, 4):
            alone = client.classify(images[i], top_k=2)
            assert [c.index for c in responses[i].classes] == [c.index for c in alone.classes]
            assert responses[i].heatmap.png.startswith(b"\x89PNG")
        assert client.classify_batch([]) == []
        with pytest.raises(ValueError, match="max_per_call must be at least 1; got 0"):
            client.classify_batch(images, max_per_call=0)
    good = [images[0], images[1], images[2]] * 2
    largest = max(SightlineClient.request(image).ByteSize() for image in good)
    with SightlineClient(f"127.0.0.1:{server.port}",
                         max_message_bytes=int(2.5 * largest)) as client:
        assert len(client.classify_batch(good)) == 6
        assert calls(server, "ClassifyBatch") == 3 + 3  # two requests fit in each message


def test_client_batch_gives_a_failed_call_to_each_of_its_images():
    client = SightlineClient("127.0.0.1:1", timeout=0.5, retries=0)  # nothing listens there
    responses = client.classify_batch([image_bytes(i) for i in range(3)])
    assert [r.error.code for r in responses] == [grpc.StatusCode.UNAVAILABLE.value[0]] * 3


def test_client_stream_and_model_info(server):
    with SightlineClient(f"127.0.0.1:{server.port}") as client:
        info = client.model_info()
        assert info.name == MODEL
        requests = [client.request(image_bytes(i), request_id=str(i), heatmap=True)
                    for i in range(5)]
        responses = list(client.classify_stream(requests))
        assert sorted(r.request_id for r in responses) == [str(i) for i in range(5)]
        assert all(Image.open(io.BytesIO(r.heatmap.png)).size == (32, 32) for r in responses)


def test_heatmap_path():
    from pathlib import Path

    assert heatmap_path(Path("o/h.png"), Path("a/cat.jpg"), many=False) == Path("o/h.png")
    assert heatmap_path(Path("o/h.png"), Path("a/cat.jpg"), many=True) == Path("o/h-cat.png")
