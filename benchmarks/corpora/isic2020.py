"""An ISIC 2020-shaped archive, generated: the files the challenge publishes, in its own layout.

``ISIC_2020_Training_JPEG.zip`` (stored, ``train/<image_name>.jpg``), ``ISIC_2020_Training_GroundTruth_v2.csv``
and ``ISIC_2020_Training_Duplicates.csv``, read by the fetch stage's ``isic2020`` layout. The shape follows the
dataset paper (Rotemberg et al. 2021): 2,056 patients with ~16 images each (long-tailed), 20.8% of patients with
a melanoma, 1.8% of images malignant, 82% of the benign ones diagnosed only "unknown", and ~1.3% of images
listed as duplicates of another (here: byte copies of an earlier image of the same patient).

The archive's dimension counts are not published, so the size mix is ours (SIZE_MIX): mostly 1024x768 and
1872x1053 camera frames with a few 6000x4000 ones. Pixels are a distinct smooth lesion picture per image plus
sensor-like noise at JPEG quality 90, so entropy decoding costs what a camera file's does; the mean file is
smaller than the real archive's (~0.7 MB: 23 GB for 33,126 images), which BENCHMARKS.md states with the figures.

Every image is a function of (seed, its index) alone and patients come in a fixed order, so the corpus of n images
is the first n images of any larger one: a corpus copies the members a cached one holds and generates only the
rest. Run as a script to generate one: ``python benchmarks/corpora/isic2020.py 33126``.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import HEIGHT, WIDTH, _lesion_picture, cache_dir, say  # noqa: E402

CORPUS_VERSION = 1  # bump when the generated corpus changes, so cached copies are not reused
ISIC2020_IMAGES = 33_126
ZIP_NAME = "ISIC_2020_Training_JPEG.zip"
TRUTH_NAME = "ISIC_2020_Training_GroundTruth_v2.csv"
DUPLICATES_NAME = "ISIC_2020_Training_Duplicates.csv"
TRUTH_COLUMNS = ("image_name", "patient_id", "lesion_id", "sex", "age_approx", "anatom_site_general_challenge",
                 "diagnosis", "benign_malignant", "target")
# (width, height, share of images)
SIZE_MIX = ((640, 480, 0.20), (1024, 768, 0.55), (1872, 1053, 0.23), (6000, 4000, 0.02))
MELANOMA_PATIENT_SHARE = 0.208
SECOND_MELANOMA_SHARE = 0.36  # 584 melanomas in 428 patients
BENIGN_DIAGNOSES = (("unknown", 0.82), ("nevus", 0.165), ("seborrheic keratosis", 0.01), ("lentigo NOS", 0.005))
SITES = ("torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital", "")
DUPLICATE_SHARE = 0.013  # 425 listed pairs in 33,126 images
SAME_LESION_SHARE = 0.05  # an image of the lesion the patient's previous image shows
QUALITY = 90
NOISE_SIGMA = 10
NOISE_MARGIN = 64
PICTURE_STEP = 2  # the lesion picture is drawn on every 2nd pixel of its 400x300 frame, then upsampled
FIRST_ID = 15_719


@dataclass(frozen=True)
class Row:
    """One image of the archive: its ground-truth row, its pixel size and the image it copies, if any."""

    image_name: str
    patient_id: str
    lesion_id: str
    sex: str
    age_approx: str
    site: str
    diagnosis: str
    size: tuple[int, int]
    duplicate_of: int | None

    @property
    def index(self) -> int:
        """Its place in the archive, from 0: what its pixels are drawn from."""
        return int(self.image_name[5:]) - FIRST_ID

    @property
    def malignant(self) -> bool:
        return self.diagnosis == "melanoma"

    def truth(self) -> tuple[str, ...]:
        verdict = "malignant" if self.malignant else "benign"
        return (self.image_name, self.patient_id, self.lesion_id, self.sex, self.age_approx, self.site,
                self.diagnosis, verdict, str(int(self.malignant)))


def _patient(seed: int, patient: int, first_index: int) -> list[Row]:
    """One patient's images, from a generator of its own: the same patient whatever the corpus size."""
    import numpy as np

    rng = np.random.default_rng([seed, 0, patient])
    count = 1 + int(rng.negative_binomial(2, 2 / 17))  # mean 16, long-tailed
    sex = str(rng.choice(["male", "female", ""], p=[0.51, 0.48, 0.01]))
    age = "" if rng.random() < 0.002 else str(int(rng.integers(2, 18)) * 5)
    melanomas = set()
    if rng.random() < MELANOMA_PATIENT_SHARE:
        wanted = min(count, 1 + int(rng.random() < SECOND_MELANOMA_SHARE))
        melanomas = set(rng.choice(count, wanted, replace=False).tolist())
    names, weights = zip(*BENIGN_DIAGNOSES, strict=True)
    shares = np.array(SIZE_MIX, dtype=float)[:, 2]
    rows: list[Row] = []
    lesion = 0
    for k in range(count):
        index = first_index + k
        duplicate = k > 0 and rng.random() < DUPLICATE_SHARE
        if k == 0 or not (duplicate or rng.random() < SAME_LESION_SHARE):
            lesion += 1
        original = rows[int(rng.integers(0, k))] if duplicate else None
        if original is not None and original.duplicate_of is not None:  # a copy of a copy: of the first image
            original = rows[original.duplicate_of - first_index]
        diagnosis = "melanoma" if k in melanomas else str(rng.choice(names, p=np.array(weights) / sum(weights)))
        width, height, _ = SIZE_MIX[int(rng.choice(len(SIZE_MIX), p=shares / shares.sum()))]
        rows.append(Row(
            image_name=f"ISIC_{FIRST_ID + index:07d}",
            patient_id=f"IP_{patient:07d}",
            lesion_id=original.lesion_id if original else f"IL_{patient:07d}_{lesion}",
            sex=sex, age_approx=age, site=str(rng.choice(SITES)),
            diagnosis=original.diagnosis if original else diagnosis,
            size=original.size if original else (width, height),
            duplicate_of=original.index if original else None,
        ))
    return rows


def rows(n: int, seed: int = 0) -> list[Row]:
    """The first ``n`` images of the archive, patient after patient (the last patient cut short)."""
    out: list[Row] = []
    patient = 0
    while len(out) < n:
        out += _patient(seed, patient, len(out))
        patient += 1
    return out[:n]


# ---------------------------------------------------------------- pixels

_NOISE = None  # per generating process: one noise field as large as the largest image, cropped per image


def _noise(seed: int):
    global _NOISE
    if _NOISE is None:
        import numpy as np
        from PIL import Image

        width, height = max(size[0] for size in SIZE_MIX), max(size[1] for size in SIZE_MIX)
        rng = np.random.default_rng([seed, 2])
        field = rng.standard_normal((height + NOISE_MARGIN, width + NOISE_MARGIN, 3), dtype=np.float32)
        _NOISE = Image.fromarray(np.clip(128 + NOISE_SIGMA * field, 0, 255).astype(np.uint8))
    return _NOISE


def image_bytes(seed: int, index: int, size: tuple[int, int]) -> bytes:
    """Image ``index``: its own lesion picture upsampled to ``size``, plus noise, as a quality-90 JPEG."""
    import numpy as np
    from PIL import Image, ImageChops

    rng = np.random.default_rng([seed, 1, index])
    yy, xx = np.mgrid[0:HEIGHT:PICTURE_STEP, 0:WIDTH:PICTURE_STEP].astype(np.float32)
    picture = Image.fromarray(np.clip(_lesion_picture(rng, yy, xx), 0, 255).astype(np.uint8))
    picture = picture.resize(size, Image.Resampling.BICUBIC)
    dx, dy = (int(v) for v in rng.integers(0, NOISE_MARGIN, 2))
    noisy = ImageChops.add(picture, _noise(seed).crop((dx, dy, dx + size[0], dy + size[1])), 1.0, -128)
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def _generate(job: tuple[int, int, tuple[int, int]]) -> bytes:
    seed, index, size = job
    return image_bytes(seed, index, size)


# ---------------------------------------------------------------- the archive on disk


def corpus_folder(n: int, seed: int = 0) -> Path:
    return cache_dir() / f"isic2020-{n}-seed{seed}-v{CORPUS_VERSION}"


def _done_marker(folder: Path) -> Path:
    return folder.with_name(f"{folder.name}.complete")  # beside the folder: a source takes every file in it


def _cached_source(n: int, seed: int) -> Path | None:
    """A complete cached corpus (same seed and version) to copy members from: the smallest holding all ``n``
    images, else the largest smaller one."""
    sizes = {int(marker.name.split("-")[1]): marker.with_name(marker.name.removesuffix(".complete"))
             for marker in cache_dir().glob(f"isic2020-*-seed{seed}-v{CORPUS_VERSION}.complete")}
    if not (sizes := {size: folder for size, folder in sizes.items() if size != n}):
        return None
    covering = [size for size in sizes if size >= n]
    return sizes[min(covering)] if covering else sizes[max(sizes)]


def _members(rows_: list[Row], seed: int, prefix: Path | None, workers: int) -> Iterator[tuple[Row, bytes]]:
    """(row, JPEG bytes) in order: the members a cached corpus holds first, then generated ones. Only the bytes of
    images that a later duplicate copies are kept, so memory does not grow with the corpus."""
    copied_by_duplicates = {row.duplicate_of for row in rows_ if row.duplicate_of is not None}
    kept: dict[int, bytes] = {}

    def keep(row: Row, data: bytes) -> tuple[Row, bytes]:
        if row.index in copied_by_duplicates:
            kept[row.index] = data
        return row, data

    copied = 0
    if prefix is not None:
        with zipfile.ZipFile(prefix / ZIP_NAME) as archive:
            names = set(archive.namelist())
            for row in rows_:
                if f"train/{row.image_name}.jpg" not in names:
                    break
                yield keep(row, archive.read(f"train/{row.image_name}.jpg"))
                copied += 1
    rest = rows_[copied:]
    jobs = [(seed, row.index, row.size) for row in rest if row.duplicate_of is None]
    with get_context("spawn").Pool(workers) as pool:
        generated = pool.imap(_generate, jobs, chunksize=8)
        for row in rest:
            yield keep(row, next(generated) if row.duplicate_of is None else kept[row.duplicate_of])


def _write_csv(path: Path, header: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)


def isic2020_corpus(n: int, seed: int = 0, workers: int | None = None) -> Path:
    """The folder holding the three ISIC 2020 files for ``n`` images: generated once, then reused."""
    folder = corpus_folder(n, seed)
    if _done_marker(folder).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows_ = rows(n, seed)
    prefix = _cached_source(n, seed)
    partial = folder.with_name(f"{folder.name}.{ZIP_NAME}.partial")
    start = time.perf_counter()
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for row, data in _members(rows_, seed, prefix, workers or os.cpu_count() or 1):
            archive.writestr(f"train/{row.image_name}.jpg", data)
    _write_csv(folder / TRUTH_NAME, TRUTH_COLUMNS, [row.truth() for row in rows_])
    _write_csv(folder / DUPLICATES_NAME, ("image_name_1", "image_name_2"),  # rows_[i] is image i
               [(rows_[row.duplicate_of].image_name, row.image_name) for row in rows_ if row.duplicate_of is not None])
    os.replace(partial, folder / ZIP_NAME)
    about = describe(rows_, folder)
    _done_marker(folder).write_text(about + "\n")
    say(f"generated {n} ISIC 2020-shaped images in {time.perf_counter() - start:.0f} s"
        f"{f' (the first from {prefix.name})' if prefix else ''}: {about}")
    return folder


def describe(rows_: list[Row], folder: Path) -> str:
    """Images, patients, malignant share, duplicates, size mix and bytes: the corpus in one line."""
    from collections import Counter

    sizes = Counter(f"{w}x{h}" for w, h in (row.size for row in rows_))
    malignant = sum(row.malignant for row in rows_)
    zip_bytes = (folder / ZIP_NAME).stat().st_size
    return (f"{len(rows_)} images of {len({row.patient_id for row in rows_})} patients, {malignant} malignant "
            f"({malignant / len(rows_):.1%}), {sum(row.duplicate_of is not None for row in rows_)} listed duplicates; "
            f"sizes {dict(sizes.most_common())}; {zip_bytes / 1e9:.2f} GB ({zip_bytes / len(rows_) / 1e3:.0f} KB an image)")


if __name__ == "__main__":
    for count in sys.argv[1:] or [str(ISIC2020_IMAGES)]:
        say(str(isic2020_corpus(int(count))))
