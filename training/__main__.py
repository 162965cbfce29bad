"""``python -m training COMMAND``, where COMMAND is one of:

    train     train a model and write an artifact
    evaluate  evaluate an artifact, update its card
    quantize  convert to TFLite, verify, gate int8
    report    write the visual HTML report of an artifact
    samples   write validation images of an artifact's dataset as PNG files

A mistake of the user's (``UserError``) prints one line and exits 2; anything else is a bug and
keeps its traceback. Config and dataset checks run before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from serving.card import Quantization
from training.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "shapes.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and write an artifact")
    train.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help="experiment YAML (default: training/configs/shapes.yaml)")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config field, e.g. epochs=5")
    train.add_argument("--output", type=Path, help="artifact directory (default: a new run dir)")

    evaluate = commands.add_parser("evaluate", help="evaluate an artifact, update its card")
    evaluate.add_argument("artifact", type=Path)
    evaluate.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                          help="average over the image and its mirror (default: as trained)")
    evaluate.add_argument("--tta-translate", action=argparse.BooleanOptionalAction, default=None,
                          help="also over it moved a pixel each way (default: as trained)")

    quantize = commands.add_parser("quantize", help="convert to TFLite, verify, gate int8")
    quantize.add_argument("artifact", type=Path)
    quantize.add_argument("--mode", dest="modes", action="append",
                          choices=["int8", "float16", "dynamic", "float32"],
                          help="repeat for several variants; the first is model.tflite "
                               "(default: int8 and float32)")
    quantize.add_argument("--representative-size", type=int, default=500,
                          help="training images used to calibrate int8 (default 500)")
    quantize.add_argument("--max-drop", type=float, default=1.0,
                          help="largest int8 top-1 loss against Keras, in points (default 1.0)")

    report = commands.add_parser("report", help="write the visual HTML report of an artifact")
    report.add_argument("artifact", type=Path)

    samples = commands.add_parser(
        "samples", help="write validation images of an artifact's dataset as PNG files")
    samples.add_argument("artifact", type=Path)
    samples.add_argument("--out", type=Path, required=True)
    samples.add_argument("--per-class", type=int, default=1)
    return parser


def format_quantization(report: Quantization) -> str:
    rows = [f"Keras accuracy {report.keras_accuracy:.4f}",
            f"{'mode':<8} {'file':<24} {'bytes':>10} {'accuracy':>8} {'agree':>7} {'ms@1':>7}"]
    for mode, v in report.variants.items():
        rows.append(f"{mode:<8} {v.file:<24} {v.bytes:>10,} {v.accuracy:>8.4f} "
                    f"{v.agreement:>7.4f} {v.latency_ms_batch1:>7.3f}")
    gate = report.gate
    rows.append(f"gate: {'passed' if gate.passed else 'FAILED'} "
                f"(int8 may lose at most {gate.max_drop_points} points)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "train":
            from training.config import load_config
            from training.data import load_dataset

            config = load_config(args.config, args.overrides)
            if config.strategy == "multiworker":
                from training.cluster import configure_tf_config

                configure_tf_config()  # in a Kubernetes Indexed Job; a missing variable fails here
            dataset = load_dataset(config.data, config.seed)  # fails fast, before TensorFlow
            from training.train import train

            artifact = train(config, args.output, dataset)
            if artifact is None:
                print("training done; this worker is not the chief, worker 0 wrote the artifact")
            else:
                print(f"artifact written: {artifact}")
        elif args.command == "quantize":
            if not args.artifact.is_dir():
                raise UserError(f"artifact directory not found: {args.artifact}")
            from training.quantize import quantize_artifact

            report = quantize_artifact(args.artifact, args.modes or ["int8", "float32"],
                                       args.representative_size, args.max_drop)
            print(format_quantization(report))
        elif args.command == "samples":
            if not args.artifact.is_dir():
                raise UserError(f"artifact directory not found: {args.artifact}")
            from training.artifact import write_samples

            for path in write_samples(args.artifact, args.out, args.per_class):
                print(path)
        elif args.command == "report":
            if not args.artifact.is_dir():
                raise UserError(f"artifact directory not found: {args.artifact}")
            from training.report import write_report

            print(f"report written: {write_report(args.artifact)}")
        else:
            from training.evaluate import evaluate_artifact, format_metrics

            if not args.artifact.is_dir():
                raise UserError(f"artifact directory not found: {args.artifact}")
            print(format_metrics(evaluate_artifact(args.artifact, args.tta_flip,
                                                    args.tta_translate)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
