"""Are the served Grad-CAM heatmaps faithful? Three checks on the boxed ``shapes`` dataset, run
on the int8 TFLite model exactly as serving runs it (``activations_and_gradients`` -> CAM method
-> ``render.upsample``):

1. Pointing game (Zhang et al. 2016): the heatmap's peak lies inside the object's box.
2. Deletion (Petsiuk et al. 2018, RISE): deleting pixels in heatmap order lowers the
   target-class probability faster than deleting them in a random map's order.
3. Model randomisation (Adebayo et al. 2018): the heatmaps of a weight-randomised copy of the
   model do not resemble the trained model's.

One small model is trained once for the module (see ``RECIPE``). Each test prints its figures
(run with ``-s``) and asserts bounds that an image-independent or model-independent heatmap
fails. Everything is seeded, but threaded TensorFlow training is not repeatable bit for bit:
the figures move by about 0.01-0.02 from run to run, and the bounds leave room for that.
"""

import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageFilter

import training
from serving.cam import METHODS, get_method, render
from serving.cam.faithfulness import (
    deletion_auc,
    deletion_curves,
    map_correlation,
    peaks,
    pointing_game,
)
from serving.card import load_card
from serving.runtime.explain import activations_and_gradients, load_head_weights
from serving.runtime.interpreter import TFLiteModel
from training import models
from training.config import load_config
from training.data import load_dataset
from training.quantize import quantize_artifact
from training.train import train

pytestmark = pytest.mark.slow

# 57 px = 8 * 7 + 1: the 2x2 valid whitening conv leaves 56 px, which the three 2x max-pools
# halve exactly, to a 7x7 CAM feature map. At the default 32 px the map is 3x3, too coarse to
# point inside a box: a 99.3% model trained at 32 px (6,000 images, 12 epochs) measured Grad-CAM's
# pointing game at 0.78 (0 px), 0.90 (2 px tolerance) and 0.68 on the off-centre images.
IMAGE_SIZE = 57
# Measured on 2 CPU cores: about 60 s fitting 4,000 images for 10 epochs, 99.6% validation
# accuracy on the other 1,000, int8 the same within 0.1 point (12 epochs: 66-109 s, 99.8-99.9%,
# the same heatmap figures). No rotation or zoom: the shapes stay in their boxes, and the
# augmentation is cheaper.
RECIPE = [
    f"data.image_size={IMAGE_SIZE}", "data.num_images=5000", "data.validation_fraction=0.2",
    "epochs=10", "augment.rotation=0", "augment.zoom=0", "tensorboard=false",
    "early_stopping_patience=0",
]
SEED = 42
SHAPES_CONFIG = Path(training.__file__).parent / "configs" / "shapes.yaml"
# Zhang et al. count a hit within 15 px of the box on 224 px images; the same share of the side.
TOLERANCE = round(15 * IMAGE_SIZE / 224)  # 4 px
DELETION_STEPS = 16  # 1/16 of the pixels per step
DELETION_IMAGES = 200
RANDOM_MAPS = 4  # random saliency maps per image, averaged, for the deletion baseline


def log(*parts):
    print("[cam-faithfulness]", *parts)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("cam-faithfulness")
    config = load_config(SHAPES_CONFIG,
                         [f"output_dir={out}", "name=shapes", f"seed={SEED}", *RECIPE])
    started = time.perf_counter()
    dataset = load_dataset(config.data, config.seed)
    artifact = train(config, out / "trained", dataset=dataset)
    trained_s = time.perf_counter() - started
    with pytest.MonkeyPatch.context() as patch:
        # quantize_artifact would draw the same images again (5 s each time)
        patch.setattr("training.data.load_dataset", lambda *_: dataset)
        quantize_artifact(artifact, ["int8", "float32"], representative_size=200, max_drop=100)
        card = load_card(artifact)
        log(f"recipe {RECIPE}: data and training {trained_s:.0f} s "
            f"({card.training['seconds']:.0f} s fitting), validation accuracy "
            f"{card.metrics['validation']['accuracy']:.4f}, int8 "
            f"{card.quantization.variants['int8'].accuracy:.4f}; "
            f"{time.perf_counter() - started:.0f} s with quantisation")

        # Adebayo et al.'s full randomisation: every layer back at its random start, the
        # data-set whitening conv too; the same architecture, input statistics and export path.
        randomised = out / "randomised"
        randomised.mkdir()
        for name in ("config.yaml", "card.json"):
            shutil.copy2(artifact / name, randomised / name)
        keras.utils.set_random_seed(SEED + 1)
        models.build_model(
            config.model, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), num_classes=card.num_classes,
            mean=card.normalization["mean"], std=card.normalization["std"],
        ).save(randomised / "model.keras")
        quantize_artifact(randomised, ["int8"], representative_size=200, max_drop=100)

    int8 = TFLiteModel(artifact / "model.tflite")
    predicted = int8.classify(dataset.val_images).argmax(axis=1)
    correct = np.flatnonzero(predicted == dataset.val_labels)
    log(f"{len(correct)} of {len(predicted)} validation images classified correctly by int8; "
        f"set-up {time.perf_counter() - started:.0f} s")
    return {
        "artifact": artifact,
        "randomised": randomised,
        "images": dataset.val_images[correct],
        "labels": dataset.val_labels[correct],
        "boxes": dataset.val_boxes[correct],
        "int8": int8,
    }


def heatmaps(artifact, file, images, targets, methods=tuple(METHODS), upsample=True):
    """{method: (N, H, W) maps} from one served model for the given targets, as the server
    makes them: upsampled to the image, or (N, h, w) at the feature map's size."""
    weights = load_head_weights(artifact, load_card(artifact))
    _, activations, gradients, _ = activations_and_gradients(
        TFLiteModel(artifact / file), images, targets, weights)
    maps = {name: get_method(name)(activations, gradients) for name in methods}
    if upsample:
        maps = {name: render.upsample(m, *images.shape[1:3]) for name, m in maps.items()}
    return maps


def best_constant_pointing(boxes, size, tolerance):
    """The pointing-game rate of the best image-independent map: the single pixel that the
    most (grown) boxes contain."""
    x0, y0, x1, y1 = boxes.T[..., None, None]
    ys, xs = np.mgrid[:size, :size]
    inside = ((x0 - tolerance <= xs) & (xs < x1 + tolerance)
              & (y0 - tolerance <= ys) & (ys < y1 + tolerance))  # (N, size, size)
    return float(inside.mean(axis=0).max())


def test_pointing_game(setup):
    """Zhang et al.'s protocol, with their tolerance scaled to the image, and without one.
    The shapes are large (a box covers 28% of the image on average) and the image centre lies
    in 82% of the boxes, so a map that always points at the centre would do well on all
    images. The "off-centre" images, whose box misses the centre, are where a map must look."""
    images, labels, boxes = setup["images"], setup["labels"], setup["boxes"]
    maps = heatmaps(setup["artifact"], "model.tflite", images, labels)
    x0, y0, x1, y1 = boxes.T
    centre = IMAGE_SIZE // 2
    off = ~((x0 <= centre) & (centre < x1) & (y0 <= centre) & (centre < y1))
    rates = {name: float(pointing_game(m, boxes, TOLERANCE).mean()) for name, m in maps.items()}
    hits = {name: pointing_game(m, boxes) for name, m in maps.items()}
    strict = {name: float(h.mean()) for name, h in hits.items()}
    off_rates = {name: float(h[off].mean()) for name, h in hits.items()}
    constant = best_constant_pointing(boxes, IMAGE_SIZE, TOLERANCE)
    constant_strict = best_constant_pointing(boxes, IMAGE_SIZE, 0)
    constant_off = best_constant_pointing(boxes[off], IMAGE_SIZE, 0)
    log(f"pointing game, int8, {len(images)} correctly classified images, "
        f"rate with {TOLERANCE} px tolerance | 0 px | 0 px on the {off.sum()} off-centre "
        "images: " + ", ".join(
            f"{name} {rates[name]:.3f} | {strict[name]:.3f} | {off_rates[name]:.3f}"
            for name in maps)
        + f"; the best image-independent point {constant:.3f} | {constant_strict:.3f} | "
        f"{constant_off:.3f}")
    assert rates["gradcam"] >= 0.95
    assert strict["gradcam"] >= 0.92
    assert off.sum() >= 50
    assert off_rates["gradcam"] >= 0.9
    assert off_rates["gradcam"] >= constant_off + 0.4  # an image-blind map cannot get there
    for name in maps:
        assert rates[name] >= 0.9, name
        assert off_rates[name] >= 0.8, name


def blurred(images, radius):
    """A neutral stand-in for deleted pixels: each image under a wide Gaussian blur."""
    return np.stack([np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))
                     for image in images])


def test_deletion_beats_random_maps(setup):
    images = setup["images"][:DELETION_IMAGES]
    labels = setup["labels"][:DELETION_IMAGES]
    baselines = blurred(images, IMAGE_SIZE / 8)
    classify = setup["int8"].classify
    cams = heatmaps(setup["artifact"], "model.tflite", images, labels, ("gradcam",),
                    upsample=False)["gradcam"]
    cam_auc = deletion_auc(deletion_curves(
        classify, images, baselines, render.upsample(cams, IMAGE_SIZE, IMAGE_SIZE), labels,
        DELETION_STEPS, seed=SEED))
    # Random maps drawn at the feature map's size and upsampled alike: as smooth as the CAMs,
    # so only where they point differs.
    rng = np.random.default_rng(SEED)
    random_auc = np.mean([
        deletion_auc(deletion_curves(
            classify, images, baselines,
            render.upsample(rng.random(cams.shape), IMAGE_SIZE, IMAGE_SIZE), labels,
            DELETION_STEPS, seed=SEED + k))
        for k in range(RANDOM_MAPS)], axis=0)
    wins = float((cam_auc < random_auc).mean())
    log(f"deletion AUC (int8, {len(images)} images, {DELETION_STEPS} steps, blurred baseline): "
        f"gradcam {cam_auc.mean():.3f}, random maps {random_auc.mean():.3f} "
        f"(mean of {RANDOM_MAPS}); gradcam lower on {wins:.0%} of images")
    assert cam_auc.mean() < random_auc.mean()
    assert cam_auc.mean() <= 0.8 * random_auc.mean()
    assert wins >= 0.7


def test_randomised_model_gives_different_heatmaps(setup):
    images, labels = setup["images"], setup["labels"]
    trained = heatmaps(setup["artifact"], "model.tflite", images, labels, ("gradcam",))
    same_float = heatmaps(setup["artifact"], "model.float32.tflite", images, labels,
                          ("gradcam",))
    randomised = heatmaps(setup["randomised"], "model.tflite", images, labels, ("gradcam",))
    # A flat map (every position negative before the ReLU: 13% of the randomised model's) has
    # no correlation to speak of; it is left out, and the share of the rest is bounded.
    figures = {}
    for method in ("pearson", "spearman"):
        control = map_correlation(trained["gradcam"], same_float["gradcam"], method)
        r = map_correlation(trained["gradcam"], randomised["gradcam"], method)
        figures[method] = (np.nanmean(control), np.nanmean(r), np.isfinite(r).mean())
    log("gradcam correlation, trained int8 vs trained float32 | vs randomised int8 "
        "(share of images with a non-flat map): "
        + "; ".join(f"{m} {c:.3f} | {r:.3f} ({share:.0%})" for m, (c, r, share) in figures.items()))
    for method, (control, r, share) in figures.items():
        assert control >= 0.9, method  # the measure does see the same model's maps as alike
        assert r < 0.3, method
        assert share >= 0.5, method


# The metrics themselves, on hand-made maps: a wrong metric would make the checks above vacuous.


def test_pointing_game_counts_a_peak_inside_the_box_only():
    maps = np.zeros((3, 8, 8), np.float32)
    maps[0, 2, 5] = 1.0  # (y, x) = (2, 5): inside (x0, y0, x1, y1) = (5, 2, 7, 4)
    maps[1, 4, 5] = 1.0  # y = 4 = y1, which is exclusive
    maps[2, 2, 4] = 1.0  # x = 4, one left of x0
    boxes = np.array([[5, 2, 7, 4]] * 3)
    assert pointing_game(maps, boxes).tolist() == [True, False, False]
    assert pointing_game(maps, boxes, tolerance=1).tolist() == [True, True, True]
    # A flat map points nowhere; an even plateau points at its middle, not its top-left corner.
    plateau = np.zeros((2, 8, 8), np.float32)
    plateau[1, :3, :5] = 1.0
    assert peaks(plateau).tolist() == [[-1, -1], [1, 2]]
    assert pointing_game(plateau, [[0, 0, 8, 8], [1, 1, 4, 4]]).tolist() == [False, True]
    # Upsampled, a corner cell's maximum is a plateau from the border to the cell's centre
    # (pixel 4.8 of 32 for a 3x3 map); its inner end, towards the heat, is the peak.
    corner = render.upsample(np.array([[[1.0, 0.5, 0], [0.5, 0.3, 0], [0, 0, 0]]]), 32, 32)
    assert (corner[0, :5, :5] == 1).all() and peaks(corner).tolist() == [[4, 4]]


def test_deletion_auc_ranks_a_faithful_map_below_an_unfaithful_one():
    """A toy model whose confidence is the share of the object left: deleting the object first
    makes the curve fall at once, deleting it last keeps it up until the end."""
    size = 8
    obj = np.zeros((size, size), bool)
    obj[2:5, 3:6] = True
    images = np.where(obj[None, ..., None], 255, 0).astype(np.uint8).repeat(3, axis=-1)
    baselines = np.zeros_like(images)

    def predict(batch):
        left = (batch[..., 0] == 255).sum(axis=(1, 2)) / obj.sum()
        return np.stack([left, 1 - left], axis=1)

    targets = np.zeros(1, int)
    faithful = deletion_curves(predict, images, baselines, obj[None].astype(float), targets,
                               steps=size * size)
    backwards = deletion_curves(predict, images, baselines, (~obj)[None].astype(float), targets,
                                steps=size * size)
    assert faithful[0, 0] == backwards[0, 0] == 1.0 and faithful[0, -1] == backwards[0, -1] == 0
    assert faithful[0, obj.sum()] == 0.0 and backwards[0, -obj.sum() - 1] == 1.0
    assert deletion_auc(faithful)[0] < 0.1 < 0.9 < deletion_auc(backwards)[0]


def test_map_correlation_matches_numpy_and_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.random((4, 5, 5))
    b = a + rng.normal(0, 0.3, a.shape)
    b[0] = np.round(b[0], 1)  # ties
    pearson = map_correlation(a, b)
    spearman = map_correlation(a, b, "spearman")
    for i in range(4):
        assert pearson[i] == pytest.approx(np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1])
        assert spearman[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel())[0])
    assert np.isnan(map_correlation(a[:1], np.zeros((1, 5, 5)))).all()
