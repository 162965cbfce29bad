"""Train a classifier from a config and write a model directory (``training.export``).

The story, top to bottom: seed everything, choose precision and distribution strategy, load the
dataset, measure its per-channel mean/std (baked into the model's first layer), build the
model, compile it with the configured loss, optimiser and schedule, fit with callbacks
(TensorBoard, checkpoints, CSV history, early stopping, a progress bar), predict the validation
split once more, and export everything with the model card.

With several workers (``strategy: multiworker``) every worker runs all of it in step, since
fit, predict and even variable creation are collective, but only the chief (worker 0) writes
into the artifact directory. The others write their identical copy to a scratch directory they
delete at the end, the usual MultiWorkerMirroredStrategy pattern: otherwise two processes would
write one ``model.keras``, one ``history.csv``, one checkpoint and one TensorBoard log.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import cluster, models
from training.config import Config
from training.data import Dataset, load_dataset
from training.data.pipeline import eval_pipeline, train_pipeline, train_steps
from training.errors import UserError
from training.evaluate import classification_metrics, predict
from training.export import new_artifact_dir, write_artifact
from training.losses import build_loss
from training.models import airbench
from training.optim import build_optimizer

__all__ = ["has_fast_bf16", "train"]

log = logging.getLogger("sightline.training")


def train(config: Config, artifact_dir: Path | None = None,
          dataset: Dataset | None = None) -> Path | None:
    """Train and write the artifact; returns its directory, or None on a worker that is not the
    chief (its scratch copy is gone by then)."""
    keras.utils.set_random_seed(config.seed)
    precision = _set_precision(config.precision)
    strategy = _strategy(config.strategy)
    worker = _Worker.of(strategy)
    if worker.count > 1 and config.time_limit_minutes > 0:
        # Each worker would read its own clock and stop at its own step, and the other would
        # wait for it in the next all-reduce forever.
        raise UserError("time_limit_minutes cannot be used with more than one worker")

    dataset = dataset or load_dataset(config.data, config.seed)
    mean, std = channel_stats(dataset.train_images)
    steps_per_epoch = max(len(dataset.train_labels) // config.batch_size, 1)

    with strategy.scope():
        model = models.build_model(
            config.model,
            input_shape=dataset.train_images.shape[1:],
            num_classes=dataset.num_classes,
            mean=mean,
            std=std,
        )
        models.initialize_from_data(model, dataset.train_images[:5000])
        model.compile(
            optimizer=build_optimizer(config.optim, steps_per_epoch, config.epochs),
            loss=build_loss(config.loss, dataset.train_labels, dataset.num_classes),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    log.info("model %s: %s parameters, precision %s, strategy %s",
             config.model.name, f"{model.count_params():,}", precision, config.strategy)
    log.info("worker %d of %d%s, %d replicas in sync", worker.index, worker.count,
             " (chief)" if worker.chief else "", strategy.num_replicas_in_sync)

    scratch = None
    if worker.chief:
        artifact_dir = artifact_dir or new_artifact_dir(config)
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"sightline-worker{worker.index}-"))
        artifact_dir = scratch / config.name
    train_ds = train_pipeline(dataset.train_images, dataset.train_labels,
                              dataset.num_classes, config)
    val_ds = eval_pipeline(dataset.val_images, dataset.val_labels,
                           dataset.num_classes, config.batch_size)
    started = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        steps_per_epoch=train_steps(len(dataset.train_labels), config),
        callbacks=_callbacks(config, artifact_dir),
        shuffle=False,  # the pipeline shuffles, seeded
        verbose="auto",
    )
    seconds = time.perf_counter() - started

    probabilities = predict(model, dataset.val_images, config.batch_size, config.eval.tta_flip,
                            config.eval.tta_translate)
    metrics = classification_metrics(dataset.val_labels, probabilities, dataset.class_names)
    epochs_run = len(history.history.get("loss", []))
    images_per_second = epochs_run * steps_per_epoch * config.batch_size / max(seconds, 1e-9)
    log.info("validation accuracy %.4f after %d epochs in %.0f s (%.0f images/s)",
             metrics["accuracy"], epochs_run, seconds, images_per_second)
    write_artifact(
        artifact_dir,
        model=model,
        config=config,
        dataset=dataset,
        history=history.history,
        metrics=metrics,
        probabilities=probabilities,
        normalization={"mean": mean.tolist(), "std": std.tolist()},
        training={
            "epochs": epochs_run,
            "seconds": round(seconds, 1),
            "images_per_second": round(images_per_second, 1),
            "precision": precision,
            "strategy": config.strategy,
            "workers": worker.count,
            "replicas_in_sync": int(strategy.num_replicas_in_sync),
            "tta_flip": config.eval.tta_flip,
            "tta_translate": config.eval.tta_translate,
        },
    )
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("worker %d done; the chief, worker 0, wrote the artifact", worker.index)
        return None
    return artifact_dir


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, H, W, 3) uint8 pixels, in 0-255 units."""
    pixels = images.reshape(-1, images.shape[-1])
    mean = pixels.mean(axis=0, dtype=np.float64)
    std = np.sqrt(np.maximum((pixels.astype(np.float64) ** 2).mean(axis=0) - mean**2, 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """bfloat16 matrix units: AMX (2-4x over float32) or AVX512-BF16 (1.1-1.3x, measured here
    on an AMD EPYC for airbench and ResNet-20)."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _set_precision(requested: str) -> str:
    """mixed_bfloat16 pays off only on CPUs with bfloat16 units; elsewhere it is slower."""
    precision = requested
    if requested == "auto":
        precision = "mixed_bfloat16" if has_fast_bf16() else "float32"
    elif requested == "mixed_bfloat16" and not has_fast_bf16():
        log.warning("this CPU has neither amx_bf16 nor avx512_bf16: training in float32")
        precision = "float32"
    keras.mixed_precision.set_global_policy(precision)
    return precision


def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        # The strategy reads the cluster from TF_CONFIG when it is built; in a Kubernetes
        # Indexed Job with no TF_CONFIG, training.cluster writes it from the pod's index first.
        cluster.configure_tf_config()
        return _MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with a ``reduce`` that Keras 3's ``fit`` can call.

    Keras 3 (3.15 here) calls ``reduce`` in two ways that work with one worker and fail with
    several (keras-team/keras#20585, open): on the whole first ``(images, labels)`` batch to
    learn its shapes, which the collective reduce tries to turn into one tensor ("Attempt to
    convert a value (PerReplica...)"); and on every step's scalar loss and metrics with
    ``axis=0``, which a scalar does not have ("Invalid reduction dimension 0"). So reduce a nest
    one value at a time, and a scalar across replicas only, which is what both calls mean.
    """

    def reduce(self, reduce_op, value, axis):
        reduce_one = super().reduce

        def one(v):
            local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
            scalar = getattr(local, "shape", None) is not None and local.shape.rank == 0
            return reduce_one(reduce_op, v, axis=None if scalar else axis)

        return tf.nest.map_structure(one, value)


@dataclass(frozen=True)
class _Worker:
    """Which worker this process is: its index, how many there are, and whether it is the chief
    that writes the artifact. Every strategy but multiworker is one worker, the chief."""

    index: int
    count: int
    chief: bool

    @classmethod
    def of(cls, strategy: tf.distribute.Strategy) -> _Worker:
        resolver = getattr(strategy, "cluster_resolver", None)
        if resolver is None or resolver.task_type is None:
            return cls(0, 1, True)
        spec = resolver.cluster_spec().as_dict()
        count = sum(len(spec.get(job, [])) for job in ("chief", "worker"))
        index = int(resolver.task_id or 0)
        return cls(index, max(count, 1), cluster.is_chief(resolver.task_type, index, spec))


class _LearningRateLog(keras.callbacks.Callback):
    """Put the current learning rate into the epoch logs, so history and curves carry it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


class _TimeLimit(keras.callbacks.Callback):
    """Stop after a wall-clock budget (benchmarks): the epoch in flight ends the run."""

    def __init__(self, minutes: float):
        super().__init__()
        self.deadline = time.perf_counter() + minutes * 60

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() > self.deadline:
            self.model.stop_training = True


class _FreezeWhitenBias(keras.callbacks.Callback):
    """airbench: the whitening conv's bias learns for its first ``epochs`` epochs only."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.get_layer(airbench.WHITEN_BIAS_LAYER).freeze()


def _callbacks(config: Config, artifact_dir: Path) -> list[keras.callbacks.Callback]:
    artifact_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[keras.callbacks.Callback] = [
        _LearningRateLog(),
        keras.callbacks.CSVLogger(str(artifact_dir / "history.csv")),
        keras.callbacks.ModelCheckpoint(
            str(artifact_dir / "checkpoint.weights.h5"), save_weights_only=True,
            monitor="val_loss", save_best_only=True,
        ),
    ]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(
            str(artifact_dir / "logs"), histogram_freq=1, write_graph=True))
    if config.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience,
            restore_best_weights=True))
    if config.optim.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=config.optim.plateau_factor,
            patience=config.optim.plateau_patience))
    if config.time_limit_minutes > 0:
        callbacks.append(_TimeLimit(config.time_limit_minutes))
    if config.model.name == "airbench" and config.model.whiten_bias_epochs > 0:
        callbacks.append(_FreezeWhitenBias(config.model.whiten_bias_epochs))
    return callbacks
