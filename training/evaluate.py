"""Evaluate a model on the validation split: accuracy, per-class precision/recall/F1 and the
confusion matrix, written into the model card.

``classification_metrics`` is plain numpy so the same numbers can be computed for any model
variant (Keras now; TFLite interpreters in the quantization step).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.card import save_card

__all__ = ["classification_metrics", "evaluate_artifact", "format_metrics", "predict",
           "tta_views"]

def predict(model, images: np.ndarray, batch_size: int, tta_flip: bool = False,
            tta_translate: bool = False) -> np.ndarray:
    """(N, H, W, 3) raw pixels -> (N, classes) probabilities, averaged over the test-time views
    of ``tta_views``."""
    x = images.astype(np.float32)
    probabilities = sum(weight * model.predict(view, batch_size=batch_size, verbose=0)
                        for weight, view in tta_views(x, tta_flip, tta_translate))
    return np.asarray(probabilities, dtype=np.float64)


def tta_views(images: np.ndarray, flip: bool, translate: bool) -> list[tuple[float, np.ndarray]]:
    """(weight, images) pairs whose weights sum to 1. ``flip``: the image and its mirror.
    ``translate`` (airbench's multi-crop): half the weight on those, and a quarter each on the
    image moved one pixel up-left and one down-right, reflect-padded, each with its mirror too."""
    shifted = []
    if translate:
        padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        h, w = images.shape[1:3]
        shifted = [padded[:, :h, :w], padded[:, 2:h + 2, 2:w + 2]]
    groups = [(0.5 if translate else 1.0, images)] + [(0.25, view) for view in shifted]
    if not flip:
        return groups
    return [(weight / 2, view) for weight, base in groups for view in (base, base[:, :, ::-1])]


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray,
                           class_names: list[str]) -> dict:
    n = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n, n), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    precision = np.divide(true_positive, confusion.sum(axis=0),
                          out=np.zeros(n), where=confusion.sum(axis=0) > 0)
    recall = np.divide(true_positive, confusion.sum(axis=1),
                       out=np.zeros(n), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros(n), where=(precision + recall) > 0)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(picked).mean()),
        "macro_f1": float(f1.mean()),
        "num_images": int(len(labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f),
                   "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1,
                                        confusion.sum(axis=1), strict=True)
        },
        "confusion_matrix": confusion.tolist(),
    }


def format_metrics(metrics: dict) -> str:
    width = max(len(name) for name in metrics["per_class"])
    rows = [f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
            f"({metrics['num_images']} images)",
            f"{'class':<{width}}  precision  recall     f1  support"]
    for name, m in metrics["per_class"].items():
        rows.append(f"{name:<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  "
                    f"{m['f1']:5.3f}  {m['support']:7d}")
    return "\n".join(rows)


def evaluate_artifact(artifact_dir: str | Path, tta_flip: bool | None = None,
                      tta_translate: bool | None = None) -> dict:
    """Reload the artifact's model and dataset split, recompute the metrics, update the card;
    the test-time augmentation is the config's unless given."""
    from training.artifact import load_artifact

    artifact = load_artifact(artifact_dir)
    card, config, dataset = artifact.card, artifact.config, artifact.dataset
    flip = config.eval.tta_flip if tta_flip is None else tta_flip
    translate = config.eval.tta_translate if tta_translate is None else tta_translate
    probabilities = predict(artifact.model, dataset.val_images, config.batch_size, flip,
                            translate)
    metrics = classification_metrics(dataset.val_labels, probabilities, dataset.class_names)
    card.metrics["evaluation"] = {**metrics, "tta_flip": flip, "tta_translate": translate}
    save_card(card, artifact_dir)
    return metrics
