"""The client library and the sightline-classify command against a real server."""

import io

import grpc
import pytest
from PIL import Image

from serving.client import SightlineClient, heatmap_path, main
from tests.serving.conftest import MODEL, image_bytes


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


def test_cli_reports_a_bad_image_and_exits_non_zero(server, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image here")
    good = tmp_path / "good.png"
    good.write_bytes(image_bytes())
    code = main([str(bad), str(good), "--target", f"127.0.0.1:{server.port}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.png: INVALID_ARGUMENT" in captured.err and "good.png:" in captured.out


def test_client_retries_unavailable_then_gives_up_quickly():
    client = SightlineClient("127.0.0.1:1", timeout=0.5, retries=2)  # nothing listens there
    with pytest.raises(grpc.RpcError) as caught:
        client.classify(image_bytes())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TimeoutError, match="not SERVING within 0.5s"):
        client.wait_until_serving(0.5)


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
