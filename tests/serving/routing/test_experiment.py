"""Experiment definitions: one table row per way a file can be wrong, each naming its field;
good YAML and JSON; the file form round trip; and ExperimentFile's last-good reload."""

import copy
import itertools
import json
import logging
import os

import pytest
import yaml

from serving.routing.decide import CanaryStep, ExperimentConfig, Guardrails, Mode
from serving.routing.experiment import (
    Experiment,
    ExperimentError,
    ExperimentFile,
    VariantSpec,
    load_experiments,
    parse_experiments,
    to_data,
)

CANARY_YAML = """\
experiments:
  - name: pets-next
    model: pets
    baseline: {label: stable}
    candidate: {version: 4}
    mode: canary
    steps: [{share: 0.05, min_samples: 1000, min_seconds: 300}, {share: 0.25}, {share: 0.5}]
    sticky_key: x-user-id
    salt: pets-next-1
    guardrails: {min_feedback: 500, max_error_rate_increase: 0.01, max_latency_p99_ratio: 1.2,
                 alpha: 0.05, min_requests: 1000}
    shadow: {queue_size: 64, explain_sample: 0.05}
"""

CANARY = Experiment(
    "pets-next", "pets", VariantSpec(label="stable"), VariantSpec(version=4),
    ExperimentConfig(Mode.CANARY, steps=(CanaryStep(0.05, 1000, 300), CanaryStep(0.25),
                                         CanaryStep(0.5)),
                     guardrails=Guardrails(500, 0.01, 1.2, 0.05, 1000)),
    sticky_key="x-user-id", salt="pets-next-1", shadow_queue_size=64, explain_sample=0.05)


SPLIT = {"name": "cats-ab", "model": "cats", "baseline": {"version": 1},
         "candidate": {"version": 2}, "mode": "split",
         "weights": {"baseline": 0.9, "candidate": 0.1}}
CANARY_ENTRY = {"name": "cats-next", "model": "cats", "baseline": {"version": 1},
                "candidate": {"version": 2}, "mode": "canary", "steps": [{"share": 0.1}]}
DROP = object()  # as a change: remove the key


def entry(base=SPLIT, **changes) -> dict:
    result = {**copy.deepcopy(base), **changes}
    return {key: value for key, value in result.items() if value is not DROP}


def one(base=SPLIT, **changes) -> dict:
    return {"experiments": [entry(base, **changes)]}


def second(**changes) -> dict:
    return {"experiments": [entry(), entry(**changes)]}


def steps(*items) -> dict:
    return one(CANARY_ENTRY, steps=list(items))


# (id, the file as decoded, text the message must hold: the field's path first)
BAD = [
    ("top level not a mapping", [1], "top level must be a mapping"),
    ("unknown top-level key", {"experiment": []}, "top level has unknown key 'experiment'; "
                                                  "known: experiments"),
    ("experiments not a list", {"experiments": {"a": 1}}, "experiments must be a list"),
    ("entry not a mapping", {"experiments": ["pets"]}, "experiments[0] must be a mapping"),
    ("unknown experiment key", one(colour="red"),
     "experiments[0] has unknown key 'colour'; known: name, model, baseline"),
    ("missing name", one(name=DROP), "experiments[0].name is required"),
    ("missing mode", one(mode=DROP), "experiments[0].mode is required"),
    ("bad name", one(name="pets next"), "experiments[0].name must match"),
    ("name too long", one(name="a" * 65), "experiments[0].name must match"),
    ("name not a string", one(name=1.1),
     "experiments[0].name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}; got 1.1"),
    ("dot model is never served", one(model=".cats"), "experiments[0].model must match"),
    ("name is the model", one(name="cats"), "experiments[0].name must differ from model 'cats'"),
    ("baseline not a mapping", one(baseline=3), "experiments[0].baseline must be a mapping; got 3"),
    ("unknown variant key", one(baseline={"tag": "x"}),
     "experiments[0].baseline has unknown key 'tag'; known: version, label"),
    ("variant with both", one(candidate={"version": 2, "label": "x"}),
     "experiments[0].candidate needs exactly one of version and label; got both"),
    ("variant with neither", one(candidate={}),
     "experiments[0].candidate needs exactly one of version and label; got neither"),
    ("version not an integer", second(name="dogs-ab", model="dogs", candidate={"version": "x"}),
     "experiments[1].candidate.version must be a positive integer; got 'x'"),
    ("version zero", one(candidate={"version": 0}),
     "experiments[0].candidate.version must be a positive integer; got 0"),
    ("version a bool", one(candidate={"version": True}),
     "experiments[0].candidate.version must be a positive integer; got True"),
    ("label too long", one(baseline={"label": "x" * 129}),
     "experiments[0].baseline.label must be a string of 1 to 128 characters; got 'xxx"),
    ("baseline is the candidate", one(candidate={"version": 1}),
     "experiments[0].candidate must differ from the baseline; both are version 1"),
    ("bad mode", one(mode="ab"), "experiments[0].mode must be one of split, shadow, canary; "
                                 "got 'ab'"),
    ("weights outside split", one(mode="shadow"),
     "experiments[0].weights applies to mode split only; got shadow"),
    ("weights missing an arm", one(weights={"baseline": 1}),
     "experiments[0].weights.candidate is required"),
    ("weight not a number", one(weights={"baseline": 1, "candidate": "lots"}),
     "experiments[0].weights.candidate must be a finite number; got 'lots'"),
    ("weight infinite", one(weights={"baseline": 1, "candidate": float("inf")}),
     "experiments[0].weights.candidate must be a finite number; got inf"),
    ("weight not positive", one(weights={"baseline": 1, "candidate": 0}),
     "experiments[0].weights is invalid: split needs two positive weights"),
    ("steps outside canary", one(steps=[{"share": 0.1}]),
     "experiments[0].steps applies to mode canary only; got split"),
    ("canary without steps", one(CANARY_ENTRY, steps=DROP),
     "experiments[0].steps must be a non-empty list for mode canary; got None"),
    ("step not a mapping", steps(0.1), "experiments[0].steps[0] must be a mapping; got 0.1"),
    ("step without share", steps({"min_samples": 10}), "experiments[0].steps[0].share is required"),
    ("unknown step key", steps({"share": 0.1, "seconds": 10}),
     "experiments[0].steps[0] has unknown key 'seconds'; known: share, min_samples, min_seconds"),
    ("step share out of range", steps({"share": 0.1}, {"share": 1.0}),
     "experiments[0].steps[1] is invalid: a canary step's share must be in (0, 1)"),
    ("step min_samples not an integer", steps({"share": 0.1, "min_samples": 10.5}),
     "experiments[0].steps[0].min_samples must be an integer; got 10.5"),
    ("steps not increasing", steps({"share": 0.5}, {"share": 0.25}),
     "experiments[0].steps is invalid: canary needs steps with strictly increasing shares"),
    ("unknown guardrail", one(guardrails={"alpah": 0.1}),
     "experiments[0].guardrails has unknown key 'alpah'; known: min_feedback, "
     "max_error_rate_increase, max_latency_p99_ratio, alpha, min_requests, mixing_variance"),
    ("guardrail out of range", one(guardrails={"alpha": 1.5}),
     "experiments[0].guardrails is invalid: need 0 < alpha < 1"),
    ("guardrail of the wrong type", one(guardrails={"min_requests": "many"}),
     "experiments[0].guardrails.min_requests must be an integer; got 'many'"),
    ("srm threshold out of range", one(srm_threshold=2),
     "experiments[0].srm_threshold is invalid: srm_threshold must be in (0, 1)"),
    ("sticky key with capitals", one(sticky_key="X-User"),
     "experiments[0].sticky_key must be a lowercase gRPC metadata key"),
    ("sticky key reserved", one(sticky_key="grpc-timeout"),
     "experiments[0].sticky_key must be a lowercase gRPC metadata key"),
    ("sticky key binary", one(sticky_key="user-bin"),
     "experiments[0].sticky_key must be a lowercase gRPC metadata key"),
    ("sticky key empty", one(sticky_key=""), "experiments[0].sticky_key must be"),
    ("empty salt", one(salt=""),
     "experiments[0].salt must be a string of 1 to 128 characters; got ''"),
    ("shadow not a mapping", one(shadow=[64]), "experiments[0].shadow must be a mapping; got [64]"),
    ("unknown shadow key", one(shadow={"size": 64}),
     "experiments[0].shadow has unknown key 'size'; known: queue_size, explain_sample"),
    ("queue too large", one(shadow={"queue_size": 4097}),
     "experiments[0].shadow.queue_size must be an integer in 1..4096; got 4097"),
    ("explain sample out of range", one(shadow={"explain_sample": 1.5}),
     "experiments[0].shadow.explain_sample must be a number in [0, 1]; got 1.5"),
    ("duplicate name", second(model="dogs"),
     "experiments[1].name 'cats-ab' is already the name of experiments[0]"),
    ("same model twice", second(name="cats-ab-2"),
     "experiments[1].model 'cats' is already the model of experiments[0]"),
    ("name is another's model", second(name="cats", model="dogs"),
     "experiments[1].name 'cats' is already the model of experiments[0]"),
    ("model is another's name", second(name="dogs-ab", model="cats-ab"),
     "experiments[1].model 'cats-ab' is already the name of experiments[0]"),
]


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in BAD],
                         ids=[row[0] for row in BAD])
def test_a_bad_definition_names_its_field(data, expected):
    with pytest.raises(ExperimentError) as raised:
        parse_experiments(data)
    assert expected in str(raised.value)
    assert str(raised.value).startswith(raised.value.field)


def test_a_long_bad_value_is_clipped():
    with pytest.raises(ExperimentError) as raised:
        parse_experiments(one(name="x" * 10_000))
    assert len(str(raised.value)) < 200 and "10,000 long" in str(raised.value)


@pytest.mark.parametrize("data", [None, {}, {"experiments": None}, {"experiments": []}])
def test_no_experiments_is_valid(data):
    assert parse_experiments(data) == {}


def test_a_good_yaml_file(tmp_path):
    path = tmp_path / "experiments.yaml"
    path.write_text(CANARY_YAML)
    assert load_experiments(path) == {"pets-next": CANARY}


def test_a_good_json_file_with_defaults(tmp_path):
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps({"experiments": [
        entry(), entry(name="dogs-shadow", model="dogs", mode="shadow", weights=DROP)]}))
    experiments = load_experiments(path)
    assert list(experiments) == ["cats-ab", "dogs-shadow"]
    ab, shadow = experiments.values()
    assert ab.config.weights == (0.9, 0.1) and ab.config.candidate_share(0) == pytest.approx(0.1)
    assert (ab.salt, ab.sticky_key, ab.shadow_queue_size, ab.explain_sample) == (
        "cats-ab", None, 64, 0.05)
    assert shadow.config == ExperimentConfig(Mode.SHADOW)


@pytest.mark.parametrize(("name", "text", "kind"), [("bad.json", "{", "JSON"),
                                                    ("bad.yaml", "experiments: [", "YAML")])
def test_a_file_that_does_not_decode_names_itself(tmp_path, name, text, kind):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ExperimentError, match=f"^{path} is not valid {kind}"):
        load_experiments(path)


@pytest.mark.parametrize("experiment", [
    CANARY,
    Experiment("cats-ab", "cats", VariantSpec(1), VariantSpec(2),
               ExperimentConfig(Mode.SPLIT, weights=(9, 1), srm_threshold=0.01)),
    Experiment("dogs-shadow", "dogs", VariantSpec(label="stable"), VariantSpec(label="next"),
               ExperimentConfig(Mode.SHADOW), shadow_queue_size=8, explain_sample=1)],
    ids=["canary", "split", "shadow"])
def test_to_data_round_trips_through_the_file_form(tmp_path, experiment):
    data = to_data(experiment)
    assert parse_experiments({"experiments": [data]}) == {experiment.name: experiment}
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump({"experiments": [data]}))
    assert load_experiments(path) == {experiment.name: experiment}
    assert json.loads(json.dumps(data)) == data  # JSON-ready for admin RPCs


def test_to_data_spells_out_the_defaults():
    data = to_data(parse_experiments(one())["cats-ab"])
    assert data["salt"] == "cats-ab" and "sticky_key" not in data
    assert data["guardrails"] == {"min_feedback": 500, "max_error_rate_increase": 0.01,
                                  "max_latency_p99_ratio": 1.2, "alpha": 0.05,
                                  "min_requests": 1000, "mixing_variance": 0.0009}
    assert data["shadow"] == {"queue_size": 64, "explain_sample": 0.05}


_SECONDS = itertools.count(1_700_000_000)


def bump(path, text):
    """Write with a strictly later mtime: two writes within one clock tick still differ."""
    path.write_text(text)
    mtime = next(_SECONDS) * 1_000_000_000
    os.utime(path, ns=(mtime, mtime))


def test_experiment_file_reloads_on_change(tmp_path):
    path = tmp_path / "experiments.yaml"
    bump(path, CANARY_YAML)
    watched = ExperimentFile(path)
    assert watched.poll() is True and watched.current == {"pets-next": CANARY}
    assert watched.poll() is False  # unchanged: not even re-read
    bump(path, yaml.safe_dump(one()))
    assert watched.poll() is True and list(watched.current) == ["cats-ab"]
    assert watched.last_error is None


def test_experiment_file_keeps_the_last_good_and_warns_once(tmp_path, caplog):
    path = tmp_path / "experiments.yaml"
    bump(path, CANARY_YAML)
    watched = ExperimentFile(path)
    watched.poll()
    good = watched.current
    bad = CANARY_YAML.replace("version: 4", "version: x")
    with caplog.at_level(logging.WARNING, logger="sightline.routing"):
        bump(path, bad)
        assert watched.poll() is False
        bump(path, bad)  # the same bad content again: changed on disk, not worth a new warning
        assert watched.poll() is False
        bump(path, bad.replace("x-user-id", "X"))
        assert watched.poll() is False
    assert watched.current is good
    assert watched.last_error.startswith("experiments[0].")
    warnings = [r.getMessage() for r in caplog.records if r.name == "sightline.routing"]
    assert len(warnings) == 2, warnings
    assert "candidate.version must be a positive integer; got 'x'" in warnings[0]
    assert "still running pets-next" in warnings[0]
    bump(path, CANARY_YAML)
    assert watched.poll() is True and watched.last_error is None


def test_experiment_file_missing_means_no_experiments(tmp_path):
    path = tmp_path / "experiments.yaml"
    watched = ExperimentFile(path)
    assert watched.poll() is True and watched.current == {} and watched.last_error is None
    assert watched.poll() is False
    bump(path, CANARY_YAML)
    assert watched.poll() is True and list(watched.current) == ["pets-next"]
    path.unlink()
    assert watched.poll() is True and watched.current == {}


def test_experiment_file_a_first_bad_read_leaves_nothing_running(tmp_path):
    path = tmp_path / "experiments.json"
    path.write_text('{"experiments": [')
    watched = ExperimentFile(path)
    assert watched.poll() is False and watched.current == {}
    assert "is not valid JSON" in watched.last_error


def test_experiment_file_sees_an_atomic_replace_of_the_same_size_and_mtime(tmp_path):
    path, staged = tmp_path / "experiments.yaml", tmp_path / "staged.yaml"
    bump(path, yaml.safe_dump(one()))
    watched = ExperimentFile(path)
    watched.poll()
    staged.write_text(yaml.safe_dump(one(name="cats-ac")))  # same length, another inode
    before = path.stat()
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(staged, path)
    assert watched.poll() is True and list(watched.current) == ["cats-ac"]
