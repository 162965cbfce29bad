"""Precision and distribution choices, and the per-channel statistics baked into models."""

import numpy as np
import pytest
import tensorflow as tf

from training import train as train_module
from training.train import channel_stats, has_fast_bf16


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx512f amx_bf16 amx_tile", True),
    ("fpu sse avx512f avx512_bf16", True),
    ("fpu sse avx512f avx2", False),
])
def test_bf16_detection_reads_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    assert has_fast_bf16(cpuinfo) is expected
    assert has_fast_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("requested, fast, expected", [
    ("auto", True, "mixed_bfloat16"),
    ("auto", False, "float32"),
    ("mixed_bfloat16", False, "float32"),  # falls back, with a warning
    ("mixed_bfloat16", True, "mixed_bfloat16"),
    ("float32", True, "float32"),
])
def test_precision_choice(monkeypatch, requested, fast, expected):
    import keras

    monkeypatch.setattr(train_module, "has_fast_bf16", lambda: fast)
    try:
        assert train_module._set_precision(requested) == expected
        assert keras.mixed_precision.global_policy().name == expected
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_strategies_by_name(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert isinstance(train_module._strategy("mirrored"), tf.distribute.MirroredStrategy)
    assert train_module._strategy("default") is tf.distribute.get_strategy()


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(axis=0), rtol=1e-4)


def test_mirrored_strategy_trains(tmp_path):
    from serving.card import load_card
    from training.config import load_config

    config = load_config(None, [f"output_dir={tmp_path}", "strategy=mirrored", "epochs=1",
                                "data.num_images=300", "model.name=basic_cnn",
                                "tensorboard=false"])
    artifact = train_module.train(config, tmp_path / "run")
    assert load_card(artifact).training["strategy"] == "mirrored"
