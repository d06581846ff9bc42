"""Train stage benchmarks: `input_pipeline_vs_seed`, `input_pipeline_vs_seed_on_originals`,
`frozen_epoch_cache_vs_none`.

    .venv/bin/python benchmarks/train.py [--quick] [--keep]

The corpus: benchmarks/shard.py's 320 ISIC-shaped JPEGs (40 with --quick; the same cached files): 80% 1024x768
and 20% 6000x4000, laid out as the split stage leaves them (`<split>/<benign|malignant>/<id>.jpg`). The train
split (256 images; 32 with --quick) is what every figure reads. skincancer.shard.shard.write_shards turns the corpus
into TFRecord shards at 224 px (96 with --quick), crop, 2 threads, timed over REPEATS passes. Every side is
measured in the same run on the same images and batch size (32, train's default), on tf.data's threads (the
machine's cores, alike on both sides), with TensorFlow imported before any clock starts. With --quick the train
split is one batch (one step per epoch): the run checks the script, and its frozen-epoch ratio is mostly Keras'
fixed cost per fit call, not the cache's saving.

input_pipeline_vs_seed
    The same 224 px images on both sides: the shards' stored JPEGs, written out once as files in class folders
    for the baseline.
    ours: skincancer.train.data.training_dataset(shards, 32, seed, AugmentParams(), "class_weight"): interleaved
    shards, shuffle, decode, flips + rotation + zoom + colour jitter (stateless, per image), batch, prefetch.
    baseline: the seed tutorials' input over those files: keras.utils.image_dataset_from_directory(224,
    batch_size=32, shuffle=True, seed) then a .map of keras.Sequential([RandomFlip, RandomRotation, RandomZoom,
    RandomBrightness, RandomContrast, RandomSaturation]) with our ranges, prefetch. Each side is built once,
    then passed over in full: one untimed warm-up pass (traces the map functions, warms the page cache), then
    REPEATS timed passes; images/s counts the images a pass yielded (ours drops the last partial batch).
    ratio = ours / baseline.
input_pipeline_vs_seed_on_originals
    What the tutorials actually do, against ours with the shard stage paid for: the baseline as above but over
    the original full-size JPEGs (decode + resize every epoch); ours: the train images over (one epoch of ours +
    the shard stage's whole run, all three splits, divided by EPOCHS_AMORTISED, params.yaml's train.epochs).
    ratio = ours / baseline.
frozen_epoch_cache_vs_none
    Where it applies: a pretrained backbone with train.cache_features true, as params/real.yaml ships it
    (phase 1, the head on the frozen backbone, trains on features of the unaugmented images, computed once).
    It does not apply to params.yaml's small_cnn trained from scratch, nor to fine-tuning (augmented images).
    One epoch of the frozen phase: the head of a mobilenet_v2 classifier (params/real.yaml's backbone, built by
    build_classifier with "pretrained" weights saved here from the same backbone built at random: no network)
    on the train split, compiled and fitted as skincancer.train.train does it (class weights, no augmentation; under
    make_deterministic, as train runs on a CPU; no validation pass on either side).
    ours: classifier.head.fit on feature_dataset of the features skincancer.train.train.cached_features extracted.
    baseline: classifier.model.fit on training_dataset without augmentation: the frozen backbone runs on every
    image, every epoch. Each side: one untimed warm-up epoch (traces the train step), then EPOCH_REPEATS timed
    epochs, s/epoch; ratio = baseline / ours (design target >= 10). The one-off feature extraction is timed
    after an untimed first extraction (tracing excluded, as for the epochs) and reported with the number of
    epochs whose savings repay it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from common import ROOT, bench_tmp, figure, machine, parse_args, print_figures, say, say_machine, timed
from shard import passes, rates, ready_corpus

if TYPE_CHECKING:  # annotations only: TensorFlow loads after the corpus is ready
    import keras
    import numpy as np
    import tensorflow as tf

    from skincancer.core.params import TrainParams
    from skincancer.train.models import Classifier

BATCH_SIZE = 32
SEED = 0
WORKERS = 2
BACKBONE = "mobilenet_v2"  # params/real.yaml's backbone, where the feature cache applies
PIPELINE_TARGET = 5.0  # design doc: our input pipeline >= 5x the seed tutorials'
CACHE_TARGET = 10.0  # design doc: a frozen epoch on cached features >= 10x faster than through the backbone
REPEATS = 3
EPOCH_REPEATS = 3


def shipped_epochs() -> int:
    """params.yaml's train.epochs: the number of epochs one shard run serves."""
    import yaml

    return int(yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["epochs"])


def verdict(ratio: float, target: float) -> str:
    passed = "PASS" if ratio >= target else "FAIL"
    return f"design target >= {target:g} on 2 cores ({machine()['nproc']} here): {passed}"


# ---------------------------------------------------------------- input_pipeline_vs_seed


def seed_pipeline(folder: Path, size: int) -> tf.data.Dataset:
    """The seed tutorials' input (keras.io, image classification from scratch): image_dataset_from_directory
    decodes and resizes each JPEG, then Keras preprocessing layers augment the batches with our ranges."""
    import keras
    import tensorflow as tf

    from skincancer.core.params import AugmentParams

    ranges = AugmentParams()
    augmentation = keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=SEED),
        keras.layers.RandomRotation(ranges.rotation, seed=SEED),
        keras.layers.RandomZoom(ranges.zoom, seed=SEED),
        keras.layers.RandomBrightness(ranges.color, value_range=(0, 255), seed=SEED),
        keras.layers.RandomContrast(ranges.color, seed=SEED),
        keras.layers.RandomSaturation((0.5 - ranges.color / 2, 0.5 + ranges.color / 2), value_range=(0, 255), seed=SEED),
    ])
    images = keras.utils.image_dataset_from_directory(
        folder, image_size=(size, size), batch_size=BATCH_SIZE, shuffle=True, seed=SEED
    )
    return images.map(
        lambda batch, labels: (augmentation(batch, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def stored_images(shards: Path, out: Path) -> Path:
    """The train split's stored JPEGs, as the shards hold them, written to <out>/<benign|malignant>/<id>.jpg."""
    from skincancer.shard.tfrecords import read_examples
    from skincancer.train.data import shard_paths

    for example in read_examples(shard_paths(shards, "train")):
        folder = out / ("malignant" if example["image/label"] else "benign")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{example['image/id']}.jpg").write_bytes(example["image/encoded"])
    return out


def images_in_pass(dataset: tf.data.Dataset) -> int:
    """One full pass over the dataset; the number of images it yielded."""
    return sum(int(labels.shape[0]) for _, labels in dataset)


def pass_rates(dataset: tf.data.Dataset) -> list[float]:
    """images/s of each timed pass, after an untimed warm-up pass."""
    count = images_in_pass(dataset)
    return rates(count, passes(lambda: images_in_pass(dataset)))


def bench_pipeline(shards: Path, shard_times: list[float], train_folder: Path, tmp: Path, size: int,
                   quick: bool) -> list[dict]:
    from skincancer.core.params import AugmentParams
    from skincancer.train.data import training_dataset

    ours = pass_rates(training_dataset(shards, BATCH_SIZE, SEED, augment=AugmentParams(), imbalance="class_weight"))
    same_images = pass_rates(seed_pipeline(stored_images(shards, tmp / "stored"), size))
    originals = pass_rates(seed_pipeline(train_folder, size))
    train_images = sum(1 for _ in train_folder.glob("*/*.jpg"))
    epochs = shipped_epochs()
    shard_s = min(shard_times)
    amortised = [round(train_images / (train_images / rate + shard_s / epochs), 2) for rate in ours]
    say(f"ours: training_dataset (shards, decode + flip/rotate/zoom/colour, batch {BATCH_SIZE}): "
        f"{max(ours):.1f} images/s (best of {REPEATS} passes)")
    say(f"baseline: image_dataset_from_directory + Keras RandomFlip/Rotation/Zoom/Brightness/Contrast/Saturation "
        f"over the same {size} px images: {max(same_images):.1f} images/s; over the originals: {max(originals):.1f}")
    say(f"ours with the shard stage ({shard_s:.2f} s, all splits) spread over {epochs} epochs: {max(amortised):.1f} "
        f"images/s, {max(amortised) / max(originals):.2f}x the tutorials' input over the originals")
    common = {"quick": quick, "better": "higher", "images": train_images}
    return [
        figure("input_pipeline_vs_seed", max(ours), max(same_images), "images/s", **common,
               passes={"ours": ours, "baseline": same_images}),
        figure("input_pipeline_vs_seed_on_originals", max(amortised), max(originals), "images/s", **common,
               epochs_amortised=epochs, shard_stage_passes_s=[round(t, 3) for t in shard_times],
               passes={"ours": amortised, "baseline": originals}),
    ]


# ---------------------------------------------------------------- frozen_epoch_cache_vs_none


def frozen_classifier(size: int, tmp: Path) -> tuple[TrainParams, Classifier]:
    """(params, classifier) as train builds them from a weights file: backbone frozen, head trainable."""
    from skincancer.core.params import AugmentParams, TrainParams
    from skincancer.train.models import build_backbone, build_classifier

    weights = tmp / "backbone.weights.h5"
    build_backbone(BACKBONE, size, None).save_weights(weights)
    params = TrainParams(backbone=BACKBONE, weights=str(weights), batch_size=BATCH_SIZE, seed=SEED,
                         augment=AugmentParams(flip=False, rotation=0, zoom=0, color=0))
    classifier = build_classifier(params, size)
    assert not classifier.backbone.trainable
    return params, classifier


def epoch_seconds(model: keras.Model, dataset: tf.data.Dataset, class_weight: dict[int, float] | None) -> list[float]:
    """Seconds of each timed one-epoch fit, after an untimed warm-up epoch that traces the train step."""
    def one_epoch() -> None:
        model.fit(dataset, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)

    one_epoch()
    return [round(timed(one_epoch)[0], 4) for _ in range(EPOCH_REPEATS)]


def bench_frozen(shards: Path, size: int, tmp: Path, quick: bool) -> dict:
    from skincancer.train.data import feature_dataset, sampling_strata, split_labels, split_records, training_dataset
    from skincancer.train.hardware import make_deterministic
    from skincancer.train.train import cached_features, class_weights, compile_for_training

    make_deterministic(SEED)  # as train does on a CPU; only now: the tutorials' pipeline above runs without it
    params, classifier = frozen_classifier(size, tmp)
    weights = class_weights(shards, params.imbalance)

    def extract() -> np.ndarray:
        return cached_features(classifier, shards, "train", BATCH_SIZE)

    extract()  # untimed: traces the predict step, as the warm-up epochs below trace the train steps
    extract_s, features = timed(extract)
    labels = split_labels(shards, "train").astype("float32")  # binary targets, as train's _targets gives them
    compile_for_training(classifier.head, params.learning_rate)
    strata = sampling_strata(split_records(shards, "train"), params.imbalance, params.balance)
    cached = feature_dataset(features, labels, BATCH_SIZE, SEED, strata)
    cached_times = epoch_seconds(classifier.head, cached, weights)

    compile_for_training(classifier.model, params.learning_rate)
    images = training_dataset(shards, BATCH_SIZE, SEED, params.augment, params.imbalance, params.balance)
    backbone_times = epoch_seconds(classifier.model, images, weights)
    cached_s, backbone_s = min(cached_times), min(backbone_times)

    repaid = extract_s / (backbone_s - cached_s)  # epochs whose savings pay for the extraction
    say(f"one-off feature extraction ({BACKBONE} over {len(labels)} train images, {features.shape[1]} features "
        f"each, tracing excluded): {extract_s:.2f} s, repaid after {repaid:.2f} epochs ({math.ceil(repaid)} whole)")
    say(f"ours: head.fit on cached features: {cached_s:.3f} s/epoch (best of {EPOCH_REPEATS})")
    say(f"baseline: model.fit through the frozen backbone: {backbone_s:.3f} s/epoch")
    say(f"baseline / ours = {backbone_s / cached_s:.1f}; {verdict(backbone_s / cached_s, CACHE_TARGET)}")
    return figure("frozen_epoch_cache_vs_none", cached_s, backbone_s, "s/epoch", quick=quick, images=len(labels),
                  backbone=BACKBONE, target_ratio=CACHE_TARGET, extraction_s=round(extract_s, 3),
                  applies="pretrained backbone with train.cache_features: true (params/real.yaml), phase 1",
                  passes={"ours": cached_times, "baseline": backbone_times})


def shard_passes(corpus: Path, manifest, size: int, out: Path) -> list[float]:
    """The shard stage, REPEATS times: its output is what train reads, epoch after epoch."""
    import shutil

    from skincancer.core.params import ShardParams
    from skincancer.shard.shard import write_shards

    params = ShardParams(image_size=size, resize="crop", workers=WORKERS)

    def one() -> None:
        shutil.rmtree(out, ignore_errors=True)
        write_shards(manifest, corpus, out, params)

    times = passes(one)
    say(f"shard stage: {len(manifest)} images to {size} px TFRecords in {min(times):.2f} s (best of {REPEATS})")
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n, size = (40, 96) if args.quick else (320, 224)
    say_machine()
    corpus, manifest = ready_corpus(n)
    with bench_tmp("train", args.keep) as tmp:
        shard_times = shard_passes(corpus, manifest, size, tmp / "shards")
        figures = bench_pipeline(tmp / "shards", shard_times, corpus / "train", tmp, size, args.quick)
        figures.append(bench_frozen(tmp / "shards", size, tmp, args.quick))
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
