"""Quantized variants side by side: file size, LiteRT latency at batch 1 and 32, and what a
heatmap costs against a plain classification.

    .venv/bin/python benchmarks/bench_quantize.py artifacts/latest [--repeats 50]

Every variant in the card's ``quantization`` section is timed in the same process and
interleaved round by round (each round a short burst of back-to-back calls per case, as a busy
worker makes them), so the machine's noise hits them all alike; only medians are
reported. Each interpreter runs on one thread, as one serving worker does. A "heatmap request"
is everything the server adds for an explanation: ``cam_inputs`` instead of ``classify``, the
gradient from the head weights (GAP heads), Grad-CAM in numpy, upsampling, the colour overlay
and the PNG. Writes ``bench-quantize.json`` and ``bench-quantize.png`` into the artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving.cam import get_method, render  # noqa: E402
from serving.card import load_card  # noqa: E402
from serving.runtime.explain import activations_and_gradients, load_head_weights  # noqa: E402
from serving.runtime.interpreter import TFLiteModel  # noqa: E402

BATCHES = (1, 32)
# Calls per case per round: back-to-back like a busy server worker, so caches are warm.
BURST = {1: 20, 32: 2}


def classify_request(model: TFLiteModel, images: np.ndarray, _weights) -> None:
    model.classify(images)


def heatmap_request(model: TFLiteModel, images: np.ndarray, weights) -> None:
    _, activations, gradients, _ = activations_and_gradients(model, images, None, weights)
    maps = render.upsample(get_method("gradcam")(activations, gradients), *images.shape[1:3])
    for image, heatmap in zip(images, maps, strict=True):
        render.to_png(render.overlay(image, heatmap))


def measure(artifact: Path, repeats: int) -> dict:
    from training.config import load_config
    from training.data import load_dataset

    card = load_card(artifact)
    if card.quantization is None:
        raise SystemExit(f"{artifact} is not quantized: run `make quantize` first")
    config = load_config(artifact / "config.yaml")
    images = load_dataset(config.data, config.seed).val_images[: max(BATCHES)]
    weights = load_head_weights(artifact, card)
    variants = card.quantization.variants
    models = {mode: TFLiteModel(artifact / v.file, num_threads=1)
              for mode, v in variants.items()}
    cases = [(mode, kind, batch) for mode in models for kind in ("classify", "heatmap")
             for batch in BATCHES]
    calls = {"classify": classify_request, "heatmap": heatmap_request}
    times = {case: [] for case in cases}
    for case in cases:  # warm-up: the first call allocates tensors
        calls[case[1]](models[case[0]], images[: case[2]], weights)
    for _ in tqdm(range(repeats), desc="rounds", unit="round"):
        for case in cases:
            mode, kind, batch = case
            started = time.perf_counter()
            for _ in range(BURST[batch]):
                calls[kind](models[mode], images[:batch], weights)
            times[case].append((time.perf_counter() - started) / BURST[batch])
    median_ms = {case: 1000 * float(np.median(t)) for case, t in times.items()}
    results = {"artifact": str(artifact), "head": card.cam.head, "repeats": repeats,
               "variants": {}}
    for mode, variant in variants.items():
        row = {"bytes": variant.bytes, "accuracy": variant.accuracy,
               "agreement": variant.agreement}
        for batch in BATCHES:
            classify = median_ms[(mode, "classify", batch)]
            heatmap = median_ms[(mode, "heatmap", batch)]
            row[f"classify_ms_b{batch}"] = round(classify, 3)
            row[f"heatmap_ms_b{batch}"] = round(heatmap, 3)
            row[f"heatmap_over_classify_b{batch}"] = round(heatmap / classify, 3)
        results["variants"][mode] = row
    if "float32" in variants and "int8" in variants:
        f32, i8 = results["variants"]["float32"], results["variants"]["int8"]
        results["int8_vs_float32"] = {
            "size_ratio": round(i8["bytes"] / f32["bytes"], 3),
            "top1_points": round(100 * (i8["accuracy"] - f32["accuracy"]), 3),
            "agreement": i8["agreement"],
            **{f"speedup_b{b}": round(f32[f"classify_ms_b{b}"] / i8[f"classify_ms_b{b}"], 2)
               for b in BATCHES},
        }
    return results


def print_table(results: dict) -> None:
    print(f"{'mode':<8} {'bytes':>10} {'top-1':>7} {'agree':>7} "
          + " ".join(f"{'cls@' + str(b):>8} {'cam@' + str(b):>8} {'ratio':>6}" for b in BATCHES))
    for mode, row in results["variants"].items():
        print(f"{mode:<8} {row['bytes']:>10,} {row['accuracy']:>7.4f} {row['agreement']:>7.4f} "
              + " ".join(f"{row[f'classify_ms_b{b}']:>8.3f} {row[f'heatmap_ms_b{b}']:>8.3f} "
                         f"{row[f'heatmap_over_classify_b{b}']:>6.2f}" for b in BATCHES))
    if "int8_vs_float32" in results:
        print("int8 vs float32:", json.dumps(results["int8_vs_float32"]))
    print(f"(milliseconds, medians of {results['repeats']} interleaved rounds, one thread; "
          f"head: {results['head']})")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["variants"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].bar(modes, [results["variants"][m]["bytes"] / 1e6 for m in modes], color="#4c72b0")
    axes[0].set_title("file size (MB)")
    for ax, batch in zip(axes[1:], BATCHES, strict=True):
        x = np.arange(len(modes))
        ax.bar(x - 0.2, [results["variants"][m][f"classify_ms_b{batch}"] for m in modes], 0.4,
               label="classify", color="#55a868")
        ax.bar(x + 0.2, [results["variants"][m][f"heatmap_ms_b{batch}"] for m in modes], 0.4,
               label="classify + heatmap", color="#c44e52")
        ax.set_xticks(x, modes)
        ax.set_title(f"latency at batch {batch} (ms)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    results = measure(args.artifact, args.repeats)
    print_table(results)
    (args.artifact / "bench-quantize.json").write_text(json.dumps(results, indent=2))
    plot(results, args.artifact / "bench-quantize.png")
    print(f"written: {args.artifact}/bench-quantize.json and bench-quantize.png")


if __name__ == "__main__":
    main()
