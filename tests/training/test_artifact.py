"""Reloading an artifact: every command that does (evaluate, quantize, report) is told when the
dataset it regenerates is not the one the model was trained on."""

import logging

import yaml

from training.artifact import load_artifact


def test_a_changed_dataset_is_reported_on_load(trained, caplog):
    artifact = trained("gap")
    with caplog.at_level(logging.WARNING, logger="sightline.training"):
        load_artifact(artifact)
    assert "dataset changed" not in caplog.text
    config = yaml.safe_load((artifact / "config.yaml").read_text())
    config["data"]["num_images"] += 60
    (artifact / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="sightline.training"):
        load_artifact(artifact)
    assert "dataset changed since training" in caplog.text
