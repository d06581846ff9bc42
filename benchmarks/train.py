"""Train stage benchmarks: `input_pipeline_vs_seed`, `input_pipeline_vs_seed_on_originals`,
`frozen_epoch_cache_vs_none`.

    .venv/bin/python benchmarks/train.py [--quick] [--keep]

The corpus: benchmarks/shard.py's 320 ISIC-shaped JPEGs (40 with --quick; the same cached files): 80% 1024x768
and 20% 6000x4000, laid out as the split stage leaves them (`<split>/<benign|malignant>/<id>.jpg`). The train
split (256 images; 32 with --quick) is what every figure reads. skincancer.shard.shard.write_shards turns the corpus
into TFRecord shards at 224 px (96 with --quick), crop, 2 threads. Every side is measured in the same run on the
same images and batch size (32, train's default), on tf.data's threads (the machine's cores, alike on both sides),
with TensorFlow imported before any clock starts. With --quick the train split is one batch (one step per
epoch): the run checks the script, and its frozen-phase ratio is mostly Keras' fixed cost per fit call.

How every figure is timed: each side gets one untimed warm-up (it traces the map and train functions and warms
the page cache), then the two sides' timed passes are run by benchmarks/common.py's `alternate`: the same number
of passes each, the sides taking turns pass by pass (ours then the baseline, then the baseline then ours, ...).
The figure is `paired_figure`'s: ratio = the median over passes i of the ratio of pass i of each side (ours_i /
baseline_i for images/s, baseline_i / ours_i for seconds), with its min and max (`ratio_range`); `ours` and
`baseline` are each side's median pass; every pass is kept. A pipeline is built before its timed pass (untimed,
on both sides, as its map functions are traced then), and iterated in full.

input_pipeline_vs_seed (images/s, REPEATS = 3 passes; a pass = one epoch)
    The same 224 px images on both sides: the shards' stored JPEGs, written out once as files in class folders
    for the baseline.
    ours: skincancer.train.data.training_dataset(shards, 32, seed, AugmentParams(), "class_weight"): interleaved
    shards, shuffle, decode, flips + rotation + zoom + colour jitter (stateless, per image), batch, prefetch.
    baseline: the seed tutorials' input over those files: keras.utils.image_dataset_from_directory(224,
    batch_size=32, shuffle=True, seed) then a .map of keras.Sequential([RandomFlip, RandomRotation, RandomZoom,
    RandomBrightness, RandomContrast, RandomSaturation]) with our ranges, prefetch (no .cache(): these files are
    already the small images). Each side's pipeline is built once; warm-up: one untimed epoch; pass i: one epoch,
    ours_i (baseline_i) = images the epoch yielded / its seconds (ours drops a last partial batch).
    ratio = median_i(ours_i / baseline_i).
input_pipeline_vs_seed_on_originals (images/s per epoch over a run of N epochs, REPEATS = 3 passes; a pass = a run)
    What a careful user of the tutorials does, against ours with the shard stage paid for, both costed per epoch
    over one training run of N = EPOCHS_AMORTISED epochs (params.yaml's train.epochs). A pass of each side is one
    whole run, timed end to end, on a pipeline built fresh for it (untimed; a fresh one so the baseline's cache
    starts empty, and ours alike).
    ours: the shard stage's whole run (write_shards over all three splits into the folder train reads, 2 threads)
    then N epochs of training_dataset (as above) over those shards:
        ours_i = N * images / (shard_run_i + N epochs of ours_i)
    baseline: image_dataset_from_directory(224, batch_size=32, shuffle=True, seed) over the original full-size
    JPEGs, then .cache() (in memory) of the decoded, resized batches, then the augmentation .map as above and
    prefetch: its first epoch decodes the originals and fills the cache, the N - 1 others augment cached images:
        baseline_i = N * images / (first_epoch_i + (N - 1) cached epochs_i)
    (images: what an epoch yields on that side, the whole train split on both here; N * images / run seconds
    is images / (the run's seconds / N), the cost of an epoch over the run). ratio = median_i(ours_i / baseline_i).
    Warm-up: ours, the shard run that makes the shards and one epoch of a fresh pipeline; the baseline, the first
    epoch and one cached epoch of a fresh pipeline. Conservative for ours: the shard run also encodes val and test,
    which the baseline never reads, and it is charged to one training run although dvc reuses its shards for
    every later one; the baseline's cached batches also skip its reshuffle (each epoch replays the first's order).
frozen_epoch_cache_vs_none (seconds per frozen phase, EPOCH_REPEATS = 5 passes)
    Where it applies: a pretrained backbone with train.cache_features true, as params/real.yaml ships it
    (phase 1, the head on the frozen backbone, trains on features of the unaugmented images, computed once).
    It does not apply to params.yaml's small_cnn trained from scratch, nor to fine-tuning (augmented images).
    The whole frozen phase of E = params/real.yaml's train.epochs epochs, the feature extraction it needs included:
    a mobilenet_v2 classifier (params/real.yaml's backbone, built by build_classifier with "pretrained" weights
    saved here from the same backbone built at random: no network) on the train split, compiled and fitted as
    skincancer.train.train does it (class weights, no augmentation; under make_deterministic, as train runs on a
    CPU; no validation pass on either side).
    ours: skincancer.train.train.cached_features once (the train split through the frozen backbone, predict),
    then classifier.head.fit on feature_dataset of those features, E epochs.
    baseline: classifier.model.fit on training_dataset without augmentation, E epochs: the frozen backbone runs
    on every image, every epoch.
    E epochs through the backbone take minutes on 2 cores, so the phase is composed per pass rather than timed
    whole: three sides take turns (the extraction, one head epoch, one full-model epoch: one-epoch fit calls;
    in the order A B C, then C B A, ...),
    each after an untimed warm-up call (tracing), and
        ours_i = extraction_i + E * head_epoch_i;  baseline_i = E * full_epoch_i
    ratio = median_i(baseline_i / ours_i). Each one-epoch fit call carries Keras' fixed cost per fit call, which
    a fit of E epochs pays once: composed, both sides pay it E times, which pulls the ratio towards 1
    (conservative for ours). The detail keeps each side's passes, E, the per-epoch ratio and the epochs after
    which the cache's savings have repaid the extraction.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    ROOT,
    alternate,
    bench_tmp,
    machine,
    paired_figure,
    parse_args,
    print_figures,
    say,
    say_machine,
    timed,
)
from goals import goal_for
from shard import rates, ready_corpus

if TYPE_CHECKING:  # annotations only: TensorFlow loads after the corpus is ready
    import keras
    import tensorflow as tf

    from skincancer.core.params import TrainParams
    from skincancer.train.models import Classifier

BATCH_SIZE = 32
SEED = 0
WORKERS = 2
BACKBONE = "mobilenet_v2"  # params/real.yaml's backbone, where the feature cache applies
REPEATS = 3  # timed passes of each side of the input pipeline figures
EPOCH_REPEATS = 5  # timed passes of each side of the frozen-phase figure (a pass: seconds, not a whole run)


def params_epochs(path: Path) -> int:
    """A params file's train.epochs."""
    import yaml

    return int(yaml.safe_load(path.read_text())["train"]["epochs"])


def shipped_epochs() -> int:
    """params.yaml's train.epochs: the number of epochs one shard run serves (EPOCHS_AMORTISED)."""
    return params_epochs(ROOT / "params.yaml")


def frozen_epochs() -> int:
    """params/real.yaml's train.epochs: the epochs of the frozen phase where the feature cache applies."""
    return params_epochs(ROOT / "params" / "real.yaml")


def verdict(record: dict) -> str:
    """The figure's goal (benchmarks/goals.py) and whether its ratio meets it."""
    goal = goal_for(record["benchmark"])
    if goal is None:
        return "no goal"
    passed = "PASS" if goal.met(record) else "FAIL"
    return f"goal {goal.cell()} on 2 cores ({machine()['nproc']} here): {passed}"


def ratio_line(record: dict, what: str) -> str:
    low, high = record["ratio_range"]
    return f"{what} = {record['ratio']:.2f} (median of {len(record['passes']['ours'])} passes, {low:.2f}-{high:.2f})"


# ---------------------------------------------------------------- input_pipeline_vs_seed


def shard_stage(manifest, corpus: Path, out: Path, size: int) -> None:
    """The shard stage's whole run, all three splits, into ``out`` (emptied first): the shards train reads."""
    from skincancer.core.params import ShardParams
    from skincancer.shard.shard import write_shards

    shutil.rmtree(out, ignore_errors=True)
    write_shards(manifest, corpus, out, ShardParams(image_size=size, resize="crop", workers=WORKERS))


def seed_pipeline(folder: Path, size: int, cache: bool = False) -> tf.data.Dataset:
    """The seed tutorials' input (keras.io, image classification from scratch): image_dataset_from_directory
    decodes and resizes each JPEG, then Keras preprocessing layers augment the batches with our ranges. With
    ``cache``, as tensorflow.org's tutorials configure it for performance: the decoded, resized batches are kept in
    memory by the first epoch, before the augmentation, so later epochs do not decode again."""
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
        folder, image_size=(size, size), batch_size=BATCH_SIZE, shuffle=True, seed=SEED, verbose=False
    )
    if cache:
        images = images.cache()
    return images.map(
        lambda batch, labels: (augmentation(batch, training=True), labels), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def ours_pipeline(shards: Path) -> tf.data.Dataset:
    from skincancer.core.params import AugmentParams
    from skincancer.train.data import training_dataset

    return training_dataset(shards, BATCH_SIZE, SEED, augment=AugmentParams(), imbalance="class_weight")


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
    """One full pass over the dataset (an epoch); the number of images it yielded."""
    return sum(int(labels.shape[0]) for _, labels in dataset)


def bench_same_images(shards: Path, tmp: Path, size: int, quick: bool) -> dict:
    """input_pipeline_vs_seed: an epoch of each over the same 224 px images, REPEATS passes in turn."""
    ours = ours_pipeline(shards)
    baseline = seed_pipeline(stored_images(shards, tmp / "stored"), size)
    counts = {"ours": images_in_pass(ours), "baseline": images_in_pass(baseline)}  # the warm-up epochs
    times = alternate(REPEATS, {"ours": lambda: images_in_pass(ours), "baseline": lambda: images_in_pass(baseline)})
    record = paired_figure("input_pipeline_vs_seed", rates(counts["ours"], times["ours"]),
                           rates(counts["baseline"], times["baseline"]), "images/s", better="higher", quick=quick,
                           images=counts, timed_pass="one epoch", seconds=times)
    say(f"ours: training_dataset (shards, decode + flip/rotate/zoom/colour, batch {BATCH_SIZE}): "
        f"{record['ours']:.1f} images/s (median of {REPEATS} epochs)")
    say(f"baseline: image_dataset_from_directory + Keras RandomFlip/Rotation/Zoom/Brightness/Contrast/Saturation "
        f"over the same {size} px images: {record['baseline']:.1f} images/s")
    say(f"{ratio_line(record, 'ours / baseline')}; {verdict(record)}")
    return record


def bench_originals(corpus: Path, manifest, shards: Path, size: int, quick: bool) -> dict:
    """input_pipeline_vs_seed_on_originals: whole runs of EPOCHS_AMORTISED epochs, REPEATS passes in turn."""
    epochs = shipped_epochs()
    train_folder = corpus / "train"
    # warm-up: the shard run that made the shards, and one epoch of a fresh ours; a first and a cached epoch of
    # a fresh baseline. Their epochs give the images an epoch yields on each side.
    counts = {"ours": images_in_pass(ours_pipeline(shards))}
    baseline_warm = seed_pipeline(train_folder, size, cache=True)
    counts["baseline"] = images_in_pass(baseline_warm)
    images_in_pass(baseline_warm)
    del baseline_warm

    # each timed run gets a pipeline of its own, built here (untimed): the baseline's cache starts empty
    fresh = {"ours": [ours_pipeline(shards) for _ in range(REPEATS)],
             "baseline": [seed_pipeline(train_folder, size, cache=True) for _ in range(REPEATS)]}
    parts: dict[str, list[float]] = {"shard_run_s": [], "ours_epochs_s": [], "baseline_first_epoch_s": [],
                                     "baseline_cached_epochs_s": []}

    def epochs_of(side: str, dataset: tf.data.Dataset, count: int) -> float:
        def run() -> None:
            for _ in range(count):
                assert images_in_pass(dataset) == counts[side]
        return timed(run)[0]

    def ours_run() -> None:
        pipeline = fresh["ours"].pop(0)  # dropped after its run
        parts["shard_run_s"].append(timed(lambda: shard_stage(manifest, corpus, shards, size))[0])
        parts["ours_epochs_s"].append(epochs_of("ours", pipeline, epochs))

    def baseline_run() -> None:
        pipeline = fresh["baseline"].pop(0)  # dropped after its run, with its cache
        parts["baseline_first_epoch_s"].append(epochs_of("baseline", pipeline, 1))
        parts["baseline_cached_epochs_s"].append(epochs_of("baseline", pipeline, epochs - 1))

    times = alternate(REPEATS, {"ours": ours_run, "baseline": baseline_run})
    record = paired_figure(
        "input_pipeline_vs_seed_on_originals", rates(epochs * counts["ours"], times["ours"]),
        rates(epochs * counts["baseline"], times["baseline"]), "images/s", better="higher", quick=quick,
        images=counts, epochs_amortised=epochs,
        formula={"ours": "N * images / (shard_run_s + ours_epochs_s [N epochs])",
                 "baseline": "N * images / (baseline_first_epoch_s + baseline_cached_epochs_s [N - 1 epochs])"},
        run_s=times, **parts)
    median = {name: statistics.median(values) for name, values in parts.items()}
    say(f"ours over a run of {epochs} epochs: shard stage ({len(manifest)} images, all splits) "
        f"{median['shard_run_s']:.2f} s + {epochs} epochs {median['ours_epochs_s']:.2f} s: "
        f"{record['ours']:.1f} images/s per epoch (median of {REPEATS} runs)")
    say(f"baseline over a run of {epochs} epochs: image_dataset_from_directory over the originals + .cache() + "
        f"Keras augmentation: first epoch {median['baseline_first_epoch_s']:.2f} s + {epochs - 1} cached epochs "
        f"{median['baseline_cached_epochs_s']:.2f} s: {record['baseline']:.1f} images/s per epoch")
    say(f"{ratio_line(record, 'ours / baseline')}; {verdict(record)}")
    return record


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


def one_epoch(model: keras.Model, dataset: tf.data.Dataset, class_weight: dict[int, float] | None) -> Callable[[], None]:
    """One one-epoch fit call of the model, as a timed side."""
    def side() -> None:
        model.fit(dataset, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)
    return side


def bench_frozen(shards: Path, size: int, tmp: Path, quick: bool) -> dict:
    from skincancer.train.data import feature_dataset, sampling_strata, split_labels, split_records, training_dataset
    from skincancer.train.hardware import make_deterministic
    from skincancer.train.train import cached_features, class_weights, compile_for_training

    make_deterministic(SEED)  # as train does on a CPU; only now: the tutorials' pipeline above runs without it
    epochs = frozen_epochs()
    params, classifier = frozen_classifier(size, tmp)
    weights = class_weights(shards, params.imbalance)

    def extract() -> None:
        cached_features(classifier, shards, "train", BATCH_SIZE)

    features = cached_features(classifier, shards, "train", BATCH_SIZE)  # untimed: traces the predict step
    labels = split_labels(shards, "train").astype("float32")  # binary targets, as train's _targets gives them
    compile_for_training(classifier.head, params.learning_rate)
    strata = sampling_strata(split_records(shards, "train"), params.imbalance, params.balance)
    head_epoch = one_epoch(classifier.head, feature_dataset(features, labels, BATCH_SIZE, SEED, strata), weights)
    compile_for_training(classifier.model, params.learning_rate)
    images = training_dataset(shards, BATCH_SIZE, SEED, params.augment, params.imbalance, params.balance)
    full_epoch = one_epoch(classifier.model, images, weights)
    head_epoch()  # untimed warm-up epochs: they trace the train steps
    full_epoch()

    times = alternate(EPOCH_REPEATS, {"extraction": extract, "head_epoch": head_epoch, "full_epoch": full_epoch})
    ours = [extraction + epochs * head for extraction, head in zip(times["extraction"], times["head_epoch"], strict=True)]
    baseline = [epochs * full for full in times["full_epoch"]]
    per_epoch = [full / head for full, head in zip(times["full_epoch"], times["head_epoch"], strict=True)]
    repaid = [extraction / (full - head) if full > head else None
              for extraction, head, full in zip(times["extraction"], times["head_epoch"], times["full_epoch"], strict=True)]
    known = [value for value in repaid if value is not None]
    record = paired_figure(
        "frozen_epoch_cache_vs_none", ours, baseline, "s", quick=quick, images=len(labels), backbone=BACKBONE,
        epochs=epochs, epochs_from="params/real.yaml train.epochs",
        formula={"ours": "extraction_s + epochs * head_epoch_s", "baseline": "epochs * full_epoch_s"},
        extraction_s=times["extraction"], head_epoch_s=times["head_epoch"], full_epoch_s=times["full_epoch"],
        per_epoch_ratio=round(statistics.median(per_epoch), 3),
        repaid_after_epochs=round(statistics.median(known), 2) if known else None,
        applies="pretrained backbone with train.cache_features: true (params/real.yaml), phase 1")
    median = {name: statistics.median(values) for name, values in times.items()}
    say(f"one-off feature extraction ({BACKBONE} over {len(labels)} train images, {features.shape[1]} features "
        f"each, tracing excluded): {median['extraction']:.2f} s (median of {EPOCH_REPEATS})")
    say(f"ours: extraction + {epochs} epochs of head.fit on cached features ({median['head_epoch']:.3f} s/epoch): "
        f"{record['ours']:.2f} s per frozen phase")
    say(f"baseline: {epochs} epochs of model.fit through the frozen backbone ({median['full_epoch']:.3f} s/epoch): "
        f"{record['baseline']:.2f} s per frozen phase")
    repaid_text = f"{record['detail']['repaid_after_epochs']} epochs" if known else "never"
    say(f"per epoch, baseline / ours = {statistics.median(per_epoch):.1f}; the extraction is repaid after "
        f"{repaid_text}")
    say(f"{ratio_line(record, 'baseline / ours per frozen phase')}; {verdict(record)}")
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n, size = (40, 96) if args.quick else (320, 224)
    say_machine()
    corpus, manifest = ready_corpus(n)
    with bench_tmp("train", args.keep) as tmp:
        shards = tmp / "shards"
        shard_s, _ = timed(lambda: shard_stage(manifest, corpus, shards, size))
        say(f"shard stage: {len(manifest)} images to {size} px TFRecords in {shard_s:.2f} s (untimed for the "
            f"figures: it makes the shards and warms the shard stage up)")
        figures = [bench_same_images(shards, tmp, size, args.quick),
                   bench_originals(corpus, manifest, shards, size, args.quick),
                   bench_frozen(shards, size, tmp, args.quick)]
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
