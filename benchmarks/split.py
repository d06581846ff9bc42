"""Split stage benchmarks: `split_10k`, `noop_repro_10k`, `split_disk_overhead_10k` (issue #4 item 6),
`split_groups_isic2020` (issue #15).

    .venv/bin/python benchmarks/split.py [--quick] [--keep]

The corpus: 10,000 distinct 400x300 JPEGs (~60 KB each; 1,000 with --quick) packed as `isic image download`
output zipped (stored): `isic-download.zip` holding `isic-download/<isic_id>.jpg` and `metadata.csv`, ~20%
malignant, ~5 images per patient. Generated once and cached (benchmarks/common.py, `cache_dir()`).

split_10k        ours: skincancer.split.build_manifest + materialise on the fetch stage's index (indexing,
                 the fetch stage's work, is not timed). baseline: the tutorials' way, measured in the same run
                 on the same zip: ZipFile.extractall, pandas, two stratified seeded sklearn train_test_split
                 calls, shutil.copy of each image into <split>/<class>/.
noop_repro_10k   ours: `dvc repro split` with nothing changed (best of 3) in a temporary git repository
                 holding the project with the corpus as a `file://` source. baseline: the first, real
                 `dvc repro split` there (fetch + split, each stage starting its own temporary Prefect server).
split_disk_overhead_10k
                 ours: bytes on disk of data/split and .dvc/cache together, each inode once (hardlinks are
                 one file), leaving out cache objects that are data/raw's own files (the fetch stage's
                 output, hardlinked from the cache). baseline: the bytes of the images in data/split.
split_groups_isic2020
                 ours: skincancer.split.plan_split with the default params (connected components of patient,
                 lesion and duplicate links, including the all-pairs near-duplicate pass over every image's
                 256-bit hash, then the class-share placement) on a generated ISIC 2020-shaped index
                 (tests/index_shapes.py: 2,056 patients, ~16 images each, 1.6% malignant; random hashes, so
                 the pass compares every pair and links none). baseline: the split as it was before groups
                 were components (`plan_split` of commit ca937e2, loaded from git: one grouping column,
                 patient_id; no near-duplicate pass; midpoint placement) on the same index in the same
                 process. Best of 3 each, alternating; the near-duplicate pass uses 2 threads, the baseline
                 has nothing to spread over threads. Target: ours under 10 s on 2 cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common import (
    BIN,
    PREVIOUS_SPLIT,
    CLI_FOLDER,
    CLI_ZIP,
    bench_tmp,
    best_of,
    copy_project,
    figure,
    inodes,
    isic_cli_corpus,
    machine,
    parse_args,
    plan_split_at,
    print_figures,
    project_env,
    run,
    say,
    say_machine,
    stages_run,
    timed,
    unique_bytes,
)

SPLIT_LIMIT_S = 30.0  # issue #4: the split of 10k images under 30 s on 2 cores
NOOP_LIMIT_S = 3.0  # issue #4: a no-op `dvc repro` under 3 s
SEED = 42


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------- split_10k

REPEATS = 3  # best of: the first pass also pays for cold caches and the writeback of earlier steps


def settle(folder: Path) -> None:
    """Remove a previous pass's output and flush pending writes, so no pass pays for another's."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()


def seconds_list(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def raw_folder(corpus: Path, tmp: Path) -> tuple[Path, Path]:
    """data/raw/<source>/ as the fetch stage leaves it, the corpus zip hardlinked in (copied if it can't be)."""
    raw_root = tmp / "raw"
    (raw_root / "bench").mkdir(parents=True)
    try:
        (raw_root / "bench" / CLI_ZIP).hardlink_to(corpus / CLI_ZIP)
    except OSError:
        shutil.copy2(corpus / CLI_ZIP, raw_root / "bench" / CLI_ZIP)
    return raw_root, raw_root / "bench"


def ours(index, raw_root: Path, split_root: Path):
    from skincancer.params import LabelParams, SplitParams
    from skincancer.split import build_manifest, materialise

    manifest = build_manifest(index, SplitParams(), LabelParams())
    materialise(manifest, raw_root, split_root)
    return manifest


def naive(zip_path: Path, work: Path, out: Path) -> int:
    """The tutorials' split: extract everything, read the CSV, split twice with sklearn, copy each image."""
    import zipfile

    import pandas as pd
    from sklearn.model_selection import train_test_split

    extracted = work / "extracted"
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(extracted)
    images = extracted / CLI_FOLDER
    frame = pd.read_csv(images / "metadata.csv")
    frame["label"] = frame["benign_malignant"].map({"benign": "benign", "malignant": "malignant"})
    train, rest = train_test_split(frame, test_size=0.2, stratify=frame["label"], random_state=SEED)
    val, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=SEED)
    copied = 0
    for name, part in (("train", train), ("val", val), ("test", test)):
        for label in ("benign", "malignant"):
            (out / name / label).mkdir(parents=True, exist_ok=True)
        for image_id, label in zip(part["isic_id"], part["label"], strict=True):
            shutil.copy(images / f"{image_id}.jpg", out / name / label / f"{image_id}.jpg")
            copied += 1
    return copied


def bench_split(corpus: Path, tmp: Path, n: int, quick: bool) -> dict:
    import pandas as pd  # noqa: F401  (imports paid before the clock starts, for both sides)
    import sklearn.model_selection  # noqa: F401

    import skincancer.split  # noqa: F401
    from skincancer.layouts import read_layout

    raw_root, folder = raw_folder(corpus, tmp)
    # the fetch stage's work, not timed (it also brings the archive into the page cache for both sides)
    index_s, index = timed(lambda: read_layout("isic-cli", folder, source="bench", raw_root=raw_root))
    say(f"indexed {len(index)} images in {index_s:.1f} s (fetch stage's work, not timed)")

    ours_times, naive_times = [], []
    for _ in range(REPEATS):  # alternating, each from a clean slate with earlier writes flushed
        settle(tmp / "ours")
        seconds, manifest = timed(lambda: ours(index, raw_root, tmp / "ours" / "split"))
        ours_times.append(seconds)
        settle(tmp / "naive")
        seconds, copied = timed(lambda: naive(folder / CLI_ZIP, tmp / "naive", tmp / "naive" / "split"))
        naive_times.append(seconds)
    ours_s, naive_s = min(ours_times), min(naive_times)
    written = sum(1 for _ in (tmp / "ours" / "split").glob("*/*/*.jpg"))
    assert written == len(manifest) == n, (written, len(manifest), n)
    assert copied == n, (copied, n)
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    say(f"ours: build_manifest + materialise of {written} images: {seconds_list(ours_times)} s "
        f"(best {ours_s:.2f} s); (split, label) counts {counts}")
    say(f"baseline: extractall + pandas + 2x train_test_split + shutil.copy of {copied} images: "
        f"{seconds_list(naive_times)} s (best {naive_s:.2f} s)")

    cores = machine()["nproc"]
    say(f"split of {n} images: {ours_s:.2f} s on {cores} cores; issue #4 requires < {SPLIT_LIMIT_S:.0f} s for 10k "
        f"on 2 cores: {verdict(ours_s < SPLIT_LIMIT_S)}")
    shutil.rmtree(tmp / "naive", ignore_errors=True)
    shutil.rmtree(tmp / "ours", ignore_errors=True)
    shutil.rmtree(raw_root, ignore_errors=True)
    return figure("split_10k", ours_s, naive_s, "s", quick=quick)


# ---------------------------------------------------------------- split_groups_isic2020

GROUPS_LIMIT_S = 10.0  # issue #15: the split of an ISIC 2020-sized index with components under 10 s


def bench_groups(quick: bool) -> dict:
    import secrets
    from types import SimpleNamespace

    from index_shapes import isic2020_shaped
    from skincancer.params import LabelParams, SplitParams
    from skincancer.split import plan_split

    index = isic2020_shaped(n_patients=300 if quick else 2056)
    index["image_hash"] = [secrets.token_hex(32) for _ in range(len(index))]
    previous = plan_split_at(PREVIOUS_SPLIT)
    one_column = SimpleNamespace(seed=SEED, fractions=(0.8, 0.1, 0.1), group_by="patient_id")
    labels = LabelParams()
    unhashed = index.drop(columns="image_hash")  # the previous split knew no hashes; dropped before the clock
    ours_times, previous_times = [], []
    for _ in range(REPEATS):
        ours_times.append(timed(lambda: plan_split(index, SplitParams(), labels))[0])
        previous_times.append(timed(lambda: previous(unhashed, one_column, labels))[0])
    ours_s, previous_s = min(ours_times), min(previous_times)
    say(f"ours: plan_split of {len(index)} images, {index['patient_id'].nunique()} patients (components + "
        f"near-duplicate pass): {seconds_list(ours_times)} s (best {ours_s:.2f} s)")
    say(f"baseline: plan_split of {PREVIOUS_SPLIT} (patient_id only, no near-duplicate pass): "
        f"{seconds_list(previous_times)} s (best {previous_s:.2f} s)")
    say(f"target < {GROUPS_LIMIT_S:.0f} s on 2 cores: {verdict(ours_s < GROUPS_LIMIT_S)}")
    return figure("split_groups_isic2020", ours_s, previous_s, "s", quick=quick)


# ---------------------------------------------------------------- noop_repro_10k, split_disk_overhead_10k


def set_source(project: Path, corpus: Path) -> None:
    import yaml

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["fetch"]["datasets"] = []
    params["fetch"]["sources"] = [{"name": "bench", "url": corpus.as_uri(), "layout": "isic-cli"}]
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def bench_repro(corpus: Path, tmp: Path, n: int, quick: bool) -> list[dict]:
    project = copy_project(tmp / "project")
    env = project_env(tmp)
    set_source(project, corpus)
    run(["git", "init", "-q", "-b", "main"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "project"], project, env)
    dvc = str(BIN / "dvc")

    first_s, result = timed(lambda: run([dvc, "repro", "split"], project, env))
    ran = stages_run(result.stdout)
    assert ran == ["fetch", "split"], (ran, result.stdout[-2000:])
    say(f"first `dvc repro split` (fetch + split of {n} images, Prefect server per stage): {first_s:.1f} s")

    noops = []

    def noop() -> None:
        result = run([dvc, "repro", "split"], project, env)
        noops.append(stages_run(result.stdout))

    noop_s = best_of(3, noop)
    assert all(ran == [] for ran in noops), noops
    say(f"no-op `dvc repro split` (nothing changed, best of 3): {noop_s:.2f} s; issue #4 requires < "
        f"{NOOP_LIMIT_S:.0f} s: {verdict(noop_s < NOOP_LIMIT_S)}")

    split, cache, raw = project / "data/split", project / ".dvc/cache", project / "data/raw"
    images = sum(path.stat().st_size for path in split.glob("*/*/*.jpg"))
    raw_inodes = inodes(raw)
    together = unique_bytes(split, cache, skip=raw_inodes)
    everything = unique_bytes(split, cache)
    linked = next(split.glob("train/*/*.jpg")).stat().st_nlink
    say(f"disk: images in data/split {images / 1e6:.1f} MB; data/split + .dvc/cache, each inode once: "
        f"{together / 1e6:.1f} MB ({together / images:.3f}x the images; split images have {linked} links); "
        f"counting the cache's copy of data/raw too: {everything / 1e6:.1f} MB "
        f"(data/raw itself: {unique_bytes(raw) / 1e6:.1f} MB)")
    return [
        figure("noop_repro_10k", noop_s, first_s, "s", quick=quick),
        figure("split_disk_overhead_10k", together, images, "bytes", quick=quick),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n = 1_000 if args.quick else 10_000
    say_machine()
    corpus_s, corpus = timed(lambda: isic_cli_corpus(n))
    say(f"corpus: {n} images at {corpus} (ready in {corpus_s:.1f} s)")
    with bench_tmp("split", args.keep) as tmp:
        figures = [bench_groups(args.quick), bench_split(corpus, tmp, n, args.quick)]
        figures += bench_repro(corpus, tmp, n, args.quick)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
