"""A real Prometheus scrapes a real Sightline server under a short load (classify, heatmaps, a
bad request, a stream, a reload, a shadow A/B experiment with late labels); then every dashboard
panel expression and every recording rule must return data through Prometheus's HTTP API, and
the dashboard preview draws them."""

import json
import shutil
import time

import grpc
import pytest
import yaml

from monitoring.grafana.panels import default_variables, load_dashboards, panel_expressions
from monitoring.grafana.preview import preview
from serving.api.server import create_server
from serving.config import ServerConfig
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as xpb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as xpb_grpc
from serving.repository.publish import deploy
from tests.monitoring.conftest import RULES
from tests.serving.conftest import classify_request, image_bytes

SCRAPE_SECONDS = 1


@pytest.fixture
def loaded_system(deployable, tmp_path, start_prometheus):
    models = tmp_path / "models"
    deploy(deployable("gap"), models)
    # A second model, "twin" (the same network), served twice: version 2 answers a copy of
    # every request to version 1, a shadow experiment.
    twin = tmp_path / "twin"
    shutil.copytree(deployable("gap"), twin)
    card = json.loads((twin / "card.json").read_text())
    (twin / "card.json").write_text(json.dumps({**card, "name": "twin"}))
    deploy(twin, models)
    deploy(twin, models)
    (models / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [{
        "name": "twin-next", "model": "twin", "baseline": {"version": 1},
        "candidate": {"version": 2}, "mode": "shadow",
        "shadow": {"queue_size": 64, "explain_sample": 1.0}}]}))
    server = create_server(ServerConfig(
        model_repository=str(models), host="127.0.0.1", poll_seconds=0.2, workers=2,
        metrics_port=0, metrics_host="127.0.0.1", drift_min_samples=10, keep_versions=2,
        default_model="gap",
        decide_seconds=0.2), port=0)
    server.start()
    try:
        prometheus = start_prometheus([f"127.0.0.1:{server.metrics_port}"],
                                      sorted(RULES.glob("*.yml")))
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            experiments = xpb_grpc.ExperimentsStub(channel)
            prometheus.wait_for('up{job="sightline"} == 1')
            for second in range(8):  # load spread over several scrapes, so rates have two points
                labels = []
                for i in range(6):
                    stub.Classify(classify_request(image=image_bytes(second * 6 + i)), timeout=10)
                    answer = stub.Classify(classify_request(
                        image=image_bytes(i), model=pb.ModelSpec(name="twin")), timeout=10)
                    labels.append(xpb.Feedback(feedback_id=answer.feedback_id,
                                               true_class=answer.classes[0].index))
                experiments.SendFeedback(xpb.SendFeedbackRequest(feedback=labels), timeout=10)
                stub.Classify(classify_request(explain=pb.ExplainRequest(png_overlay=True)),
                              timeout=10)
                with pytest.raises(grpc.RpcError):
                    stub.Classify(pb.ClassifyRequest(image=b"not an image"), timeout=10)
                list(stub.ClassifyStream(iter([classify_request(), classify_request()]),
                                         timeout=10))
                if second in (3, 5):  # reloads mid-traffic; the second unloads version 1
                    deploy(deployable("gap"), models)
                time.sleep(SCRAPE_SECONDS)
            time.sleep(3 * SCRAPE_SECONDS)  # the last samples scraped, the rules evaluated
            yield prometheus, server
    finally:
        server.stop(grace=1.0, drain=0)


def test_every_panel_and_recording_rule_returns_data_and_nothing_fires(loaded_system, tmp_path):
    prometheus, server = loaded_system
    assert server.manager.models() == {"gap": [2, 3], "twin": [1, 2]}
    empty = []
    for name, dashboard in load_dashboards().items():
        variables = default_variables(dashboard, step_s=SCRAPE_SECONDS,
                                      scrape_interval_s=SCRAPE_SECONDS, range_s=60)
        variables["__rate_interval"] = "30s"  # spans every scrape of the load
        for query in panel_expressions(dashboard, variables):
            if not prometheus.query(query.expr):
                empty.append(f"{name}: {query.panel_title} [{query.ref_id}]: {query.expr}")
    assert empty == [], "\n".join(empty)

    rules = [rule for path in sorted(RULES.glob("*.yml"))
             for group in yaml.safe_load(path.read_text())["groups"]
             for rule in group["rules"] if "record" in rule]
    assert len(rules) >= 10
    missing = [rule["record"] for rule in rules if not prometheus.query(rule["record"])]
    assert missing == [], missing

    report = preview(prometheus.url, tmp_path / "previews", minutes=1,
                     scrape_interval=SCRAPE_SECONDS, variables={"__rate_interval": "30s"})
    for name, result in report["dashboards"].items():
        assert result["errors"] == [], (name, result["errors"])
        assert (tmp_path / "previews" / f"{name}.png").stat().st_size > 10_000

    # Healthy traffic (one bad request in eight is the client's fault) fires no alert.
    firing = [a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]
              if a["state"] == "firing"]
    assert firing == []
