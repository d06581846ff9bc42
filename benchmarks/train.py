"""Train stage benchmarks: `input_pipeline_vs_seed`, `frozen_epoch_cache_vs_none`.

    .venv/bin/python benchmarks/train.py [--quick] [--keep]

The corpus: benchmarks/shard.py's 320 ISIC-shaped JPEGs (40 with --quick; the same cached files): 80% 1024x768
and 20% 6000x4000, laid out as the split stage leaves them (`<split>/<benign|malignant>/<id>.jpg`). The train
split (256 images; 32 with --quick) is what both figures read. skincancer.shard.write_shards turns the corpus
into TFRecord shards at 224 px (96 with --quick), crop, 2 threads; that stage runs once per dataset, not once
per epoch, so its time is reported as a line of its own and is in no figure. Every side is measured in the same
run on the same images and batch size (32, train's default), with TensorFlow imported before any clock starts.
With --quick the train split is one batch (one step per epoch): the run checks the script, and its frozen-epoch
ratio is mostly Keras' fixed cost per fit call, not the cache's saving.

input_pipeline_vs_seed
    ours: skincancer.data.training_dataset(shards, 32, seed, AugmentParams(), "class_weight"): interleaved
    shards, shuffle, decode of the small stored JPEG, flips + rotation + zoom + colour jitter, batch, prefetch.
    baseline: the seed tutorials' input over the same original JPEGs in their class folders (train/):
    keras.utils.image_dataset_from_directory(image_size, batch_size=32, shuffle=True, seed) (full-size decode
    + resize), then a .map of keras.Sequential([RandomFlip, RandomRotation, RandomZoom]) with our rotation and
    zoom ranges (no colour jitter: less work than ours), prefetch. Each side is built once, then passed over
    in full: one untimed warm-up pass (traces the map functions, warms the page cache), then the best of
    REPEATS timed passes; images/s counts the images the pass yielded (ours drops the last partial batch).
    ratio = ours / baseline (design target >= 5).
frozen_epoch_cache_vs_none
    One epoch of the frozen phase: the head of a mobilenet_v3_small classifier (built by build_classifier
    with "pretrained" weights saved here from the same backbone built at random: no network) on the train
    split, compiled and fitted as skincancer.train does it (class weights, no augmentation; under
    make_deterministic, as train runs on a CPU; no validation pass on either side).
    ours: classifier.head.fit on feature_dataset of the features skincancer.train.cached_features extracted.
    baseline: classifier.model.fit on training_dataset: the frozen backbone runs on every image, every epoch.
    Each side: one untimed warm-up epoch (traces the train step), then the best of EPOCH_REPEATS timed
    epochs, s/epoch; ratio = baseline / ours (design target >= 10). The one-off feature extraction is
    timed after an untimed first extraction (tracing excluded, as for the epochs) and reported as a line of its
    own, with the number of epochs whose savings repay it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from common import bench_tmp, best_of, figure, machine, parse_args, print_figures, say, say_machine, timed
from shard import rate_figure, ready_corpus

if TYPE_CHECKING:  # annotations only: TensorFlow loads after the corpus is ready
    import keras
    import numpy as np
    import tensorflow as tf

    from skincancer.models import Classifier
    from skincancer.params import TrainParams

BATCH_SIZE = 32
SEED = 0
WORKERS = 2
BACKBONE = "mobilenet_v3_small"  # a real keras.applications backbone that is cheap on a CPU
PIPELINE_TARGET = 5.0  # design doc: our input pipeline >= 5x the seed tutorials'
CACHE_TARGET = 10.0  # design doc: a frozen epoch on cached features >= 10x faster than through the backbone
REPEATS = 3
EPOCH_REPEATS = 3


def verdict(ratio: float, target: float) -> str:
    passed = "PASS" if ratio >= target else "FAIL"
    return f"design target >= {target:g} on 2 cores ({machine()['nproc']} here): {passed}"


# ---------------------------------------------------------------- input_pipeline_vs_seed


def seed_pipeline(folder: Path, size: int) -> tf.data.Dataset:
    """The seed tutorials' input (keras.io, image classification from scratch): image_dataset_from_directory
    decodes and resizes each full-size JPEG, then Keras preprocessing layers augment the batches."""
    import keras
    import tensorflow as tf

    from skincancer.params import AugmentParams

    ranges = AugmentParams()
    augmentation = keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=SEED),
        keras.layers.RandomRotation(ranges.rotation, seed=SEED),
        keras.layers.RandomZoom(ranges.zoom, seed=SEED),
    ])
    images = keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=BATCH_SIZE, shuffle=True, seed=SEED
    )
    return images.map(
        lambda batch, labels: (augmentation(batch, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def images_in_pass(dataset: tf.data.Dataset) -> int:
    """One full pass over the dataset; the number of images it yielded."""
    return sum(int(labels.shape[0]) for _, labels in dataset)


def pass_rate(dataset: tf.data.Dataset) -> float:
    """images/s of the best timed pass, after an untimed warm-up pass."""
    count = images_in_pass(dataset)
    return count / best_of(REPEATS, lambda: images_in_pass(dataset))


def bench_pipeline(shards: Path, train_folder: Path, size: int, quick: bool) -> dict:
    from skincancer.data import training_dataset
    from skincancer.params import AugmentParams

    ours_rate = pass_rate(training_dataset(shards, BATCH_SIZE, SEED, augment=AugmentParams(), imbalance="class_weight"))
    seed_rate = pass_rate(seed_pipeline(train_folder, size))
    say(f"ours: training_dataset (shards, decode + flip/rotate/zoom/colour, batch {BATCH_SIZE}): "
        f"{ours_rate:.1f} images/s (best of {REPEATS} passes)")
    say(f"baseline: image_dataset_from_directory (full-size decode + resize) + Keras RandomFlip/RandomRotation/"
        f"RandomZoom: {seed_rate:.1f} images/s")
    say(f"ours / baseline = {ours_rate / seed_rate:.2f}; {verdict(ours_rate / seed_rate, PIPELINE_TARGET)}")
    return rate_figure("input_pipeline_vs_seed", ours_rate, seed_rate, quick)


# ---------------------------------------------------------------- frozen_epoch_cache_vs_none


def frozen_classifier(size: int, tmp: Path) -> tuple[TrainParams, Classifier]:
    """(params, classifier) as train builds them from a weights file: backbone frozen, head trainable."""
    from skincancer.models import build_backbone, build_classifier
    from skincancer.params import AugmentParams, TrainParams

    weights = tmp / "backbone.weights.h5"
    build_backbone(BACKBONE, size, None).save_weights(weights)
    params = TrainParams(backbone=BACKBONE, weights=str(weights), batch_size=BATCH_SIZE, seed=SEED,
                         augment=AugmentParams(flip=False, rotation=0, zoom=0, color=0))
    classifier = build_classifier(params, size)
    assert not classifier.backbone.trainable
    return params, classifier


def epoch_seconds(model: keras.Model, dataset: tf.data.Dataset, class_weight: dict[int, float] | None) -> float:
    """Seconds of the best timed one-epoch fit, after an untimed warm-up epoch that traces the train step."""
    def one_epoch() -> None:
        model.fit(dataset, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)

    one_epoch()
    return best_of(EPOCH_REPEATS, one_epoch)


def bench_frozen(shards: Path, size: int, tmp: Path, quick: bool) -> dict:
    from skincancer.data import feature_dataset, training_dataset
    from skincancer.hardware import make_deterministic
    from skincancer.train import cached_features, compile_for_training, class_weights

    make_deterministic(SEED)  # as train does on a CPU; only now: the tutorials' pipeline above runs without it
    params, classifier = frozen_classifier(size, tmp)
    weights = class_weights(shards, params.imbalance)

    def extract() -> tuple[np.ndarray, np.ndarray]:
        return cached_features(classifier, shards, "train", BATCH_SIZE)

    extract()  # untimed: traces the predict step, as the warm-up epochs below trace the train steps
    extract_s, (features, labels) = timed(extract)
    compile_for_training(classifier.head, params.learning_rate)
    cached = feature_dataset(features, labels, BATCH_SIZE, SEED, params.imbalance)
    cached_s = epoch_seconds(classifier.head, cached, weights)

    compile_for_training(classifier.model, params.learning_rate)
    images = training_dataset(shards, BATCH_SIZE, SEED, params.augment, params.imbalance)
    backbone_s = epoch_seconds(classifier.model, images, weights)

    repaid = extract_s / (backbone_s - cached_s)  # epochs whose savings pay for the extraction
    say(f"one-off feature extraction ({BACKBONE} over {len(labels)} train images, {features.shape[1]} features "
        f"each, tracing excluded): {extract_s:.2f} s, repaid after {repaid:.2f} epochs ({math.ceil(repaid)} whole)")
    say(f"ours: head.fit on cached features: {cached_s:.3f} s/epoch (best of {EPOCH_REPEATS})")
    say(f"baseline: model.fit through the frozen backbone: {backbone_s:.3f} s/epoch")
    say(f"baseline / ours = {backbone_s / cached_s:.1f}; {verdict(backbone_s / cached_s, CACHE_TARGET)}")
    return figure("frozen_epoch_cache_vs_none", cached_s, backbone_s, "s/epoch", quick=quick)


def shard_once(corpus: Path, manifest, size: int, out: Path) -> None:
    """The shard stage, once: its output is what train reads, epoch after epoch."""
    from skincancer.params import ShardParams
    from skincancer.shard import write_shards

    params = ShardParams(image_size=size, resize="crop", workers=WORKERS)
    seconds, _ = timed(lambda: write_shards(manifest, corpus, out, params))
    say(f"shard stage (one-off, in no figure): {len(manifest)} images to {size} px TFRecords in {seconds:.2f} s "
        f"({len(manifest) / seconds:.1f} images/s)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n, size = (40, 96) if args.quick else (320, 224)
    say_machine()
    corpus, manifest = ready_corpus(n)
    with bench_tmp("train", args.keep) as tmp:
        shard_once(corpus, manifest, size, tmp / "shards")
        figures = [
            bench_pipeline(tmp / "shards", corpus / "train", size, args.quick),
            bench_frozen(tmp / "shards", size, tmp, args.quick),
        ]
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
