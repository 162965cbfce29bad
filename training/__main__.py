"""``python -m training {train,evaluate}``.

A mistake of the user's (``UserError``) prints one line and exits 2; anything else is a bug and
keeps its traceback. Config and dataset checks run before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "shapes.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "train":
            from training.config import load_config
            from training.data import load_dataset

            config = load_config(args.config, args.overrides)
            dataset = load_dataset(config.data, config.seed)  # fails fast, before TensorFlow
            from training.train import train

            artifact = train(config, args.output, dataset)
            print(f"artifact written: {artifact}")
        else:
            from training.evaluate import evaluate_artifact, format_metrics

            if not args.artifact.is_dir():
                raise UserError(f"artifact directory not found: {args.artifact}")
            print(format_metrics(evaluate_artifact(args.artifact, args.tta_flip)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
