import re
from pathlib import Path

import pytest

from training.config import Config, load_config
from training.errors import UserError

CONFIGS = sorted((Path(__file__).parents[2] / "training/configs").glob("*.yaml"))


def test_defaults_without_a_file():
    config = load_config()
    assert config == Config()
    assert config.data.name == "shapes"
    assert config.optim.learning_rate == 1e-3 and config.model.l2 == 1e-3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.epochs > 0


def test_shipped_configs_include_the_three_named():
    assert {"shapes.yaml", "cifar10_seed.yaml", "cifar10_fast.yaml"} <= {p.name for p in CONFIGS}


def test_overrides_reach_top_level_and_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nmodel:\n  name: resnet\n")
    config = load_config(path, ["epochs=5", "optim.learning_rate=0.01", "augment.flip=false",
                                "optim.warmup_epochs=2"])
    assert config.epochs == 5
    assert config.model.name == "resnet"
    assert config.optim.learning_rate == 0.01
    assert config.augment.flip is False
    assert config.optim.warmup_epochs == 2.0 and isinstance(config.optim.warmup_epochs, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("epoch=5", "unknown config key 'epoch'"),
        ("model.nme=x", "unknown config key 'model.nme'"),
        ("epochs=five", "'epochs' must be int, got 'five'"),
        ("epochs=true", "'epochs' must be int"),
        ("epochs=0", "'epochs' must be > 0"),
        ("augment.flip=3", "'augment.flip' must be bool"),
        ("optim.name=rmsprop", "'optim.name' must be one of adam, sgd, adamw"),
        ("data.name=imagenet", "'data.name' must be one of shapes, cifar10, folder"),
        ("data.name=folder", "needs data.path"),
        ("model=resnet", "'model' is a section"),
        ("epochs.x=1", "epochs is a value"),
        ("noequals", "must look like key=value"),
        ("data.validation_fraction=1.5", "validation_fraction must be between 0 and 1"),
        ("data.image_size=8", "image_size must be within 16-224"),
        ("data.image_size=300", "image_size must be within 16-224"),
        ("model.dropout=1.2", "'model.dropout' must be in [0, 1)"),
        ("optim.learning_rate=-1", "learning_rate must be > 0"),
        ("model.pool=min", "'model.pool' must be one of avg, max"),
        ("model.bias_lr_scale=0", "'model.bias_lr_scale' must be > 0"),
    ],
)
def test_bad_values_name_the_key_and_value(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(listy)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("data:\n  nam: shapes\n")
    with pytest.raises(UserError, match="unknown config key 'data.nam'"):
        load_config(unknown)
