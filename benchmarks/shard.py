"""Shard stage benchmarks (issue #5 item 6): `shard_vs_naive`, `shard_vs_naive_one_thread`,
`shard_threads_vs_processes`, `shard_peak_memory_growth`.

    .venv/bin/python benchmarks/shard.py [--quick] [--keep]

The corpus: 320 JPEGs (40 with --quick) shaped like ISIC's: 80% 1024x768 and 20% 6000x4000, quality 90,
each a skin-toned field with a darker lesion plus per-pixel noise; laid out as the split stage leaves them
(`<split>/<benign|malignant>/<id>.jpg` + `manifest.parquet`, 80/10/10, ~20% malignant). Generated once and
cached (benchmarks/common.py, `cache_dir()`). Every side is measured in the same run on the same files, after
one untimed read of every file (page cache warm for all), with TensorFlow imported before any clock starts. The
two sides of a ratio take turns pass by pass, REPEATS passes each (common.alternate); the figure is the median of
the passes' ratios with their min-max (common.paired_figure), every pass kept in the record.

shard_vs_naive     ours: skincancer.shard.shard.write_shards(workers=2, image_size=224, crop), images/s.
                   baseline: the tutorials' per-image work on a pool of as many threads: PIL full decode (no
                   draft), EXIF transpose, centre crop, LANCZOS resize to 224, JPEG encode (same quality and
                   subsampling), tf.train.Example serialisation; the records written in order by one
                   TFRecordWriter. ratio = ours / baseline (goal >= 4, benchmarks/goals.py). The decode floor
                   (read + Image.open + draft + load on 2 threads: decoding alone, which any shard stage must do)
                   runs in the same turns; floor / baseline is the most any shard stage could reach on this corpus
                   (detail.most_possible_ratio). detail.by_size repeats ours, the baseline and the floor on each
                   image size alone.
shard_vs_naive_one_thread
                   the same two on one thread each (write_shards workers=1; the baseline's pool of one).
shard_threads_vs_processes
                   ours as above (the default mapper: 2 threads) vs write_shards with a mapper running the
                   same chunks on a spawned 2-process pool (the previous default). ratio = ours / baseline.
shard_peak_memory_growth
                   absolute, against the goal that memory does not grow with the number of images (<= 1.2x):
                   peak RSS above the process's RSS after its imports, in a fresh process sharding the corpus
                   listed twice (2N images) over once (N). The raw peaks are in the detail: TensorFlow's import
                   dominates them and would hide growth.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import shutil
import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from common import (
    alternate,
    bench_tmp,
    cache_dir,
    paired_figure,
    parse_args,
    print_figures,
    say,
    say_machine,
    target_figure,
    timed,
)
from goals import goal_for

CORPUS_VERSION = 3  # bump when the generated corpus changes, so cached copies are not reused (3: width, height)
SMALL, LARGE = (1024, 768), (6000, 4000)
LARGE_SHARE = 0.2
SPLIT_SHARES = (("train", 0.8), ("val", 0.1), ("test", 0.1))
MALIGNANT_SHARE = 0.2
NOISE_TILE = 509  # a prime side, so the tiled noise never lines up with the 8x8 JPEG blocks
IMAGE_SIZE = 224
WORKERS = 2
REPEATS = 3


# ---------------------------------------------------------------- corpus


def _picture(rng, size: tuple[int, int], noise) -> bytes:
    """A smooth lesion picture upsampled to ``size`` plus tiled sensor-like noise, as a quality-90 JPEG."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:72, 0:96].astype(np.float32)
    skin = rng.uniform([170, 120, 100], [230, 180, 160])
    cy, cx, radius = rng.uniform(25, 47), rng.uniform(30, 66), rng.uniform(12, 30)
    lesion = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / radius, 0, 1)[..., None]
    small = skin * (1 - 0.6 * lesion) + lesion * rng.uniform([60, 30, 20], [120, 80, 60])
    base = np.asarray(Image.fromarray(small.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC), np.int16)
    width, height = size
    dy, dx = (int(v) for v in rng.integers(0, NOISE_TILE, 2))
    reps = (math.ceil((height + dy) / NOISE_TILE), math.ceil((width + dx) / NOISE_TILE), 1)
    pixels = np.clip(base + np.tile(noise, reps)[dy:dy + height, dx:dx + width], 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _assignments(n: int, rng) -> Iterator[tuple[str, int, tuple[int, int]]]:
    """(split, label, size) per image: exact shares, in a seeded random order."""
    large = set(rng.permutation(n)[: round(n * LARGE_SHARE)].tolist())
    malignant = set(rng.permutation(n)[: round(n * MALIGNANT_SHARE)].tolist())
    order = rng.permutation(n).tolist()
    splits: dict[int, str] = {}
    start = 0
    for split, share in SPLIT_SHARES:
        count = round(n * share) if split != "test" else n - start
        splits.update((index, split) for index in order[start:start + count])
        start += count
    for index in range(n):
        yield splits[index], int(index in malignant), LARGE if index in large else SMALL


def shard_corpus(n: int, seed: int = 0) -> Path:
    """A split tree of ``n`` images + manifest.parquet under cache_dir(), generated once per (n, seed)."""
    import numpy as np
    import pandas as pd

    folder = cache_dir() / f"shard-{n}-seed{seed}-v{CORPUS_VERSION}"
    done = folder.with_name(f"{folder.name}.complete")
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 10, (NOISE_TILE, NOISE_TILE, 3)).astype(np.int16)
    rows = []
    for index, (split, label, size) in enumerate(_assignments(n, rng)):
        image_id = f"ISIC_{index + 1:07d}"
        path = f"{split}/{'malignant' if label else 'benign'}/{image_id}.jpg"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(_picture(rng, size, noise))
        rows.append({"image_id": image_id, "source": "bench", "diagnosis": "melanoma" if label else "nevus",
                     "patient_id": f"IP_{index // 3:07d}", "group": f"IP_{index // 3:07d}", "sex": "female", "age_approx": 50.0,
                     "anatom_site": "torso", "width": size[0], "height": size[1], "split": split, "label": label,
                     "path": path})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    done.write_text(f"{n} images, seed {seed}\n")
    return folder


def corpus_summary(corpus: Path, manifest) -> str:
    from PIL import Image

    sizes = [Image.open(corpus / path).size for path in manifest["path"]]
    large = sum(1 for size in sizes if size == LARGE)
    total = sum((corpus / path).stat().st_size for path in manifest["path"])
    return (f"{len(sizes)} images: {len(sizes) - large} x {SMALL[0]}x{SMALL[1]}, {large} x {LARGE[0]}x{LARGE[1]}; "
            f"{total / 1e6:.0f} MB")


def warm(corpus: Path, manifest) -> None:
    """Read every file once, untimed, so no side pays for the first read from disk."""
    for path in manifest["path"]:
        (corpus / path).read_bytes()


def ready_corpus(n: int) -> tuple[Path, object]:
    """The corpus of n images and its manifest, announced and read once; TensorFlow and pandas imported
    before any clock starts, for every side."""
    corpus_s, corpus = timed(lambda: shard_corpus(n))
    import pandas as pd
    import tensorflow  # noqa: F401

    manifest = pd.read_parquet(corpus / "manifest.parquet")
    say(f"corpus: {corpus_summary(corpus, manifest)} at {corpus} (ready in {corpus_s:.1f} s)")
    warm(corpus, manifest)
    return corpus, manifest


# ---------------------------------------------------------------- the sides


def ours(manifest, corpus: Path, out: Path, workers: int = WORKERS, map_chunks=None) -> dict:
    from skincancer.core.params import ShardParams
    from skincancer.shard.shard import write_shards

    params = ShardParams(image_size=IMAGE_SIZE, resize="crop", workers=workers)
    return write_shards(manifest, corpus, out, params, map_chunks)


def in_processes(encode_chunk: Callable, chunks: list) -> Iterator[list]:
    """A mapper running the chunks on a spawned process pool (the default before threads), for comparison."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(encode_chunk, chunks)


def naive_record(corpus: Path, row) -> bytes:
    """The tutorials' work on one image: full decode, crop, resize, encode, serialise."""
    from PIL import Image, ImageOps

    from skincancer.shard import tfrecords

    img = ImageOps.exif_transpose(Image.open(corpus / row.path)).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=92, subsampling="4:4:4")
    return tfrecords.serialize_example(
        encoded=buffer.getvalue(), height=IMAGE_SIZE, width=IMAGE_SIZE, image_id=row.image_id,
        label=int(row.label), diagnosis=row.diagnosis, source=row.source, group=row.image_id,
        patient_id=row.patient_id, sex=row.sex, age_approx=row.age_approx, anatom_site=row.anatom_site,
    )


def naive(manifest, corpus: Path, out: Path, workers: int = WORKERS) -> int:
    """The tutorials' way on a thread pool: each image prepared on a thread, written in order by one writer."""
    from skincancer.shard import tfrecords

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with tfrecords.writer(out / "naive.tfrecord") as writer, ThreadPoolExecutor(workers) as pool:
        for record in pool.map(lambda row: naive_record(corpus, row), manifest.itertuples()):
            writer.write(record)
            written += 1
    return written


def _draft_load(path: Path) -> tuple[int, int]:
    from PIL import Image

    img = Image.open(io.BytesIO(path.read_bytes()))
    img.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    img.load()
    return img.size


def decode_limit(manifest, corpus: Path) -> int:
    """Reduced-scale decode alone on WORKERS threads: the floor under any shard stage on this machine."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return len(list(pool.map(_draft_load, [corpus / path for path in manifest["path"]])))


# ---------------------------------------------------------------- peak memory, in fresh processes


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process image. Not getrusage's ru_maxrss: a spawned child
    inherits the forking parent's resident size in it, which would hide the child's own peak."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def peak_of_run(corpus: str, copies: int, out: str) -> tuple[float, float]:
    """(RSS after imports, peak RSS) in MB of this process sharding the corpus listed ``copies`` times."""
    import pandas as pd
    import tensorflow  # noqa: F401

    manifest = pd.read_parquet(Path(corpus) / "manifest.parquet")
    listed = pd.concat([manifest.assign(image_id=manifest["image_id"] + f"-{copy}") for copy in range(copies)])
    imported = _status_mb("VmRSS:")
    ours(listed, Path(corpus), Path(out))
    return imported, _status_mb("VmHWM:")


def peak_in_fresh_process(corpus: Path, copies: int, out: Path) -> tuple[float, float]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(peak_of_run, str(corpus), copies, str(out)).result()


# ---------------------------------------------------------------- figures


def rates(n: int, times: list[float]) -> list[float]:
    return [round(n / seconds, 2) for seconds in times]


def _sides(manifest, corpus: Path, tmp: Path) -> dict[str, Callable[[], None]]:
    """Every way of doing the work, on ``manifest``'s images: ours and the baseline on WORKERS threads and on
    one, ours on processes, and the decode floor."""
    n = len(manifest)

    def run_ours(workers: int = WORKERS, map_chunks=None) -> Callable[[], None]:
        def side() -> None:
            shutil.rmtree(tmp / "ours", ignore_errors=True)
            document = ours(manifest, corpus, tmp / "ours", workers, map_chunks)
            assert sum(split["count"] for split in document["splits"].values()) == n, document["skipped"]
        return side

    def run_naive(workers: int) -> Callable[[], None]:
        def side() -> None:
            assert naive(manifest, corpus, tmp / "naive", workers) == n
        return side

    return {"ours": run_ours(), "naive": run_naive(WORKERS), "ours_one": run_ours(workers=1),
            "naive_one": run_naive(1), "processes": run_ours(map_chunks=in_processes),
            "decode_limit": lambda: decode_limit(manifest, corpus)}


def _median_rate(n: int, seconds: list[float]) -> float:
    return n / statistics.median(seconds)


def floor_by_size(manifest, corpus: Path, tmp: Path) -> dict[str, dict]:
    """Per image size: ours, the baseline and the decode floor alone (2 threads each, taking turns), in images/s,
    and the most any shard stage could beat the baseline by on that size: the floor's rate over the baseline's."""
    from PIL import Image

    sizes = [Image.open(corpus / path).size for path in manifest["path"]]
    by_size = {}
    for size in (SMALL, LARGE):
        subset = manifest[[found == size for found in sizes]]
        # every split keeps an image (the stage needs all three); which split an image is in costs nothing
        subset = subset.assign(split=[("val", "test", *["train"] * 8)[i % 10] for i in range(len(subset))])
        sides = _sides(subset, corpus, tmp)
        times = alternate(REPEATS, {name: sides[name] for name in ("ours", "naive", "decode_limit")})
        rate = {name: _median_rate(len(subset), seconds) for name, seconds in times.items()}
        by_size[f"{size[0]}x{size[1]}"] = {
            "images": len(subset), "ours": round(rate["ours"], 2), "baseline": round(rate["naive"], 2),
            "decode_floor": round(rate["decode_limit"], 2),
            "ours_share_of_floor": round(rate["ours"] / rate["decode_limit"], 3),
            "most_possible_ratio": round(rate["decode_limit"] / rate["naive"], 2),
            "passes": {name: rates(len(subset), seconds) for name, seconds in times.items()}}
        say(f"{size[0]}x{size[1]} ({len(subset)} images): ours {rate['ours']:.1f}, baseline {rate['naive']:.1f}, "
            f"decode floor {rate['decode_limit']:.1f} images/s: ours at {rate['ours'] / rate['decode_limit']:.0%} "
            f"of the floor; no shard stage can beat the baseline by more than "
            f"{rate['decode_limit'] / rate['naive']:.2f}x on these")
    return by_size


def bench_speed(corpus: Path, manifest, tmp: Path, quick: bool) -> list[dict]:
    n = len(manifest)
    sides = _sides(manifest, corpus, tmp)
    # the pairs of each ratio take turns pass by pass; the decode floor runs beside the 2-thread pair
    times = alternate(REPEATS, {name: sides[name] for name in ("ours", "naive", "decode_limit")})
    times |= alternate(REPEATS, {name: sides[name] for name in ("ours_one", "naive_one")})
    times |= {f"{name}_vs_processes": seconds for name, seconds in
              alternate(REPEATS, {name: sides[name] for name in ("ours", "processes")}).items()}
    rate = {side: _median_rate(n, seconds) for side, seconds in times.items()}
    say(f"ours: write_shards, {WORKERS} threads: {rate['ours']:.1f} images/s; 1 worker: {rate['ours_one']:.1f} "
        f"images/s (median of {REPEATS} passes each)")
    say(f"baseline: full decode + crop + resize + encode + serialise, {WORKERS} threads: {rate['naive']:.1f} "
        f"images/s; 1 thread: {rate['naive_one']:.1f} images/s")
    say(f"same chunks on a spawned {WORKERS}-process pool: {rate['processes_vs_processes']:.1f} images/s")
    say(f"decode floor (read + open + draft + load, {WORKERS} threads): {rate['decode_limit']:.1f} images/s: ours "
        f"reaches {rate['ours'] / rate['decode_limit']:.2f} of it; the floor is "
        f"{rate['decode_limit'] / rate['naive']:.2f}x the baseline, the most any shard stage could reach here")

    def pair(name: str, ours_side: str, baseline_side: str, threads: int, **extra) -> dict:
        return paired_figure(name, rates(n, times[ours_side]), rates(n, times[baseline_side]), "images/s",
                             better="higher", quick=quick, images=n, threads=threads, **extra)

    floor = rates(n, times["decode_limit"])
    return [
        pair("shard_vs_naive", "ours", "naive", WORKERS, decode_limit=floor,
             most_possible_ratio=round(rate["decode_limit"] / rate["naive"], 2),
             by_size=floor_by_size(manifest, corpus, tmp)),
        pair("shard_vs_naive_one_thread", "ours_one", "naive_one", 1),
        pair("shard_threads_vs_processes", "ours_vs_processes", "processes_vs_processes", WORKERS),
    ]


def bench_memory(corpus: Path, n: int, tmp: Path, quick: bool) -> dict:
    """Peak memory above the process's own after imports (TensorFlow's import dominates the raw peak and would
    hide any growth), sharding the corpus listed once and twice."""
    imported_1, peak_1 = peak_in_fresh_process(corpus, 1, tmp / "memory-1")
    imported_2, peak_2 = peak_in_fresh_process(corpus, 2, tmp / "memory-2")
    above_1, above_2 = peak_1 - imported_1, peak_2 - imported_2
    say(f"peak RSS above the {imported_1:.0f} MB after imports: {above_1:.0f} MB sharding {n} images, "
        f"{above_2:.0f} MB sharding {2 * n} (raw peaks {peak_1:.0f} and {peak_2:.0f} MB)")
    return target_figure("shard_peak_memory_growth", round(above_2 / above_1, 3), goal_for("shard_peak_memory_growth").value,
                         f"x above imports ({n} to {2 * n} images)", quick=quick,
                         above_imports_mb={str(n): round(above_1, 1), str(2 * n): round(above_2, 1)},
                         peak_mb={str(n): round(peak_1, 1), str(2 * n): round(peak_2, 1)},
                         after_imports_mb={str(n): round(imported_1, 1), str(2 * n): round(imported_2, 1)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n = 40 if args.quick else 320
    say_machine()
    corpus, manifest = ready_corpus(n)
    with bench_tmp("shard", args.keep) as tmp:
        figures = bench_speed(corpus, manifest, tmp, args.quick)
        figures.append(bench_memory(corpus, n, tmp, args.quick))
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
