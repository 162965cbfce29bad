"""Dashboard pictures from a real run: a Sightline server and a Prometheus on loopback, a few
minutes of mixed traffic, then ``preview`` draws every dashboard (docs/monitoring.md pictures).

Traffic: classify requests on the artifact's own validation images, some with heatmaps, a few
bad requests, one streamed batch per second, a hot reload half-way through, and in the last
third the images darkened, so the drift panels have something to show. The artifact is served
as versions 1 and 2 under a 50/50 A/B split, and every routed request's true label is sent back
(SendFeedback), so the A/B panels have traffic and accuracy.

    .venv/bin/python -m monitoring.preview_demo ARTIFACT --seconds 180 --out docs/images
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import yaml
from PIL import Image

from monitoring import local_prometheus
from monitoring.grafana.preview import preview
from serving.api.server import create_server
from serving.config import ServerConfig
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as xpb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as xpb_grpc
from serving.repository.publish import deploy

ROOT = Path(__file__).resolve().parents[1]
SCRAPE = 2  # seconds


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def validation_images(artifact: Path, n: int = 1200) -> tuple[list[np.ndarray], list[int]]:
    from training.config import load_config  # the demo may use TensorFlow-free training code
    from training.data import load_dataset

    config = load_config(artifact / "config.yaml")
    dataset = load_dataset(config.data, config.seed)
    return list(dataset.val_images[:n]), [int(c) for c in dataset.val_labels[:n]]


def run(artifact: Path, seconds: float, out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sightline-monitor-demo-"))
    models = work / "models"
    model = deploy(artifact, models).parent.name
    deploy(artifact, models)
    (models / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [{
        "name": f"{model}-next", "model": model, "baseline": {"version": 1},
        "candidate": {"version": 2}, "mode": "split",
        "weights": {"baseline": 0.5, "candidate": 0.5}}]}))
    server = create_server(ServerConfig(
        model_repository=str(models), host="127.0.0.1", metrics_host="127.0.0.1",
        metrics_port=0, poll_seconds=1.0, drift_min_samples=200, version_policy="all"),
        port=0)
    server.start()
    rules = sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml"))
    prometheus = local_prometheus.start([f"127.0.0.1:{server.metrics_port}"], rules,
                                        work / "prometheus", scrape_seconds=SCRAPE)
    try:
        images, labels = validation_images(artifact)
        _traffic(server.port, images, labels, seconds, lambda: deploy(artifact, models))
        time.sleep(3 * SCRAPE)
        return preview(prometheus.url, out, minutes=seconds / 60 + 0.5, scrape_interval=SCRAPE)
    finally:
        prometheus.stop()
        server.stop(grace=2.0, drain=0)
        shutil.rmtree(work, ignore_errors=True)


def _traffic(port: int, images: list[np.ndarray], labels: list[int], seconds: float,
             reload) -> None:
    rng = np.random.default_rng(0)
    normal = [png(image) for image in images]
    dark = [png((image * 0.35).astype(np.uint8)) for image in images]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        experiments = xpb_grpc.ExperimentsStub(channel)
        started, reloaded = time.monotonic(), False
        while (elapsed := time.monotonic() - started) < seconds:
            pool = dark if elapsed > 2 * seconds / 3 else normal
            feedback = []
            for _ in range(20):
                index = int(rng.integers(len(pool)))
                request = pb.ClassifyRequest(image=pool[index])
                if rng.random() < 0.1:
                    request.explain.png_overlay = True
                response = stub.Classify(request, timeout=10)
                if response.feedback_id:
                    feedback.append(xpb.Feedback(feedback_id=response.feedback_id,
                                                 true_class=labels[index]))
            experiments.SendFeedback(xpb.SendFeedbackRequest(feedback=feedback), timeout=10)
            try:
                stub.Classify(pb.ClassifyRequest(image=b"not an image"), timeout=10)
            except grpc.RpcError:
                pass
            batch = [pb.ClassifyRequest(image=pool[i % len(pool)]) for i in range(8)]
            list(stub.ClassifyStream(iter(batch), timeout=10))
            if not reloaded and elapsed > seconds / 2:
                reload()
                reloaded = True
            time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--out", type=Path, default=Path("artifacts/dashboards"))
    args = parser.parse_args()
    report = run(args.artifact, args.seconds, args.out)
    for name, result in report["dashboards"].items():
        print(f"{name}: {result['png']} ({len(result['empty_panels'])} empty panels: "
              f"{result['empty_panels']})")


if __name__ == "__main__":
    main()
