"""Near-duplicate hash on real ISIC images: recall on made copies, false links between distinct lesions, cost.

    .venv/bin/python benchmarks/near_duplicates.py [--real DIR] [--quick]

DIR (default: $SKINCANCER_REAL_DATA) is the real-data folder of docs/model-quality.md: it holds
skin-cancer-9-classes.zip (180x180 JPEGs), isic-archive-uda1.zip (full-size JPEGs) and HAM10000_metadata.csv;
without it the script says so and reports nothing. The zips are read in place.

near_dup_recall_<copy>   fraction of originals whose copy (resized 50%/25% LANCZOS, re-encoded q70/80/95, cropped
                         a random 0-5% a side, resized 50% + q70) is within THRESHOLD of it. Absolute, against the
                         target (0.99; 0.95 for the crop).
near_dup_false_links     images linked to a different lesion (unique bytes; HAM10000 lesion_id and image id name
                         one lesion; UDA-1 images are distinct lesions), as a fraction of images, less the pairs in
                         SAME_LESION_BY_EYE (``by_metadata`` counts them too). Target <= 0.001.
near_dup_index_<size>    a measurement (the hash's cost, no verdict): images/s of read + sha256 + perceptual hash
                         + header size (layouts._hashes_and_sizes), with the rate without the perceptual hash
                         (the same function with it stubbed out: less work, so no baseline) in the detail, same
                         threads, best of the same passes; 180 px (9-class), full-size (UDA-1), and 1024x768 and
                         6000x4000 made by resizing real UDA-1 images. benchmarks/scale.py measures the whole
                         fetch stage at 33k images.
near_dup_pairs_33k       seconds of near_duplicate_pairs on 33,000 random hashes (2 threads). Target <= 5 s.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

from common import (
    ROOT,
    add_real_data_option,
    best_of,
    measurement,
    print_figures,
    real_data_problem,
    say,
    say_machine,
    target_figure,
)

NINE = "skin-cancer-9-classes.zip"
UDA = "isic-archive-uda1.zip"
HAM = "HAM10000_metadata.csv"
SEED = 0
COPY_TARGETS = {"resize50": 0.99, "resize25": 0.99, "q70": 0.99, "q80": 0.99, "q95": 0.99, "crop": 0.95,
                "resize50_q70": 0.99}
FALSE_LINK_TARGET = 0.001
PAIRS_TARGET_S = 5.0
# Pairs the metadata calls two lesions that a person looked at side by side and found to be one lesion: the same
# photograph under two ids (ISIC_0000520 is ISIC_0010302) or a second shot of it (the rest: same hairs, same
# outline). They are what the hash is for, so they are listed but not counted as false links.
SAME_LESION_BY_EYE = {("ISIC_0000520", "ISIC_0010302"), ("ISIC_0001135", "ISIC_0009882"),
                      ("ISIC_0001126", "ISIC_0010746"), ("ISIC_0001134", "ISIC_0010016")}
N_INDEX = 33_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_real_data_option(parser)
    parser.add_argument("--quick", action="store_true", help="a few hundred images, one timed pass")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- real images


def originals(real: Path, quick: bool) -> list[dict]:
    """Every UDA-1 image and every 9-class image unique by bytes: id, source, lesion key, uri, bytes."""
    import pandas as pd

    lesion_of = pd.read_csv(real / HAM).set_index("image_id")["lesion_id"].to_dict()
    rows, seen = [], set()
    for name, source in ((UDA, "uda1"), (NINE, "9class")):
        with zipfile.ZipFile(real / name) as archive:
            members = sorted(m for m in archive.namelist() if m.lower().endswith(".jpg"))
            for member in members[: (60 if source == "uda1" else 240) if quick else None]:
                data = archive.read(member)
                digest = hashlib.sha256(data).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                image_id = Path(member).stem.removesuffix(" (1)")
                lesion = lesion_of.get(image_id, image_id) if source == "9class" else image_id
                rows.append({"id": image_id, "source": source, "lesion": lesion, "uri": f"{name}!{member}",
                             "data": data})
    return _same_lesion_keys(rows)


def _same_lesion_keys(rows: list[dict]) -> list[dict]:
    """One key per lesion: an image id shared by two rows joins their lesions (union-find over id and lesion)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for row in rows:
        parent[find("id:" + row["id"])] = find("lesion:" + row["lesion"])
    for row in rows:
        row["key"] = find("lesion:" + row["lesion"])
    return rows


def _jpeg(img, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def copies(data: bytes, rng) -> dict[str, bytes]:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = img.size
    lanczos = Image.Resampling.LANCZOS
    half = img.resize((max(1, round(w / 2)), max(1, round(h / 2))), lanczos)
    left, top, right, bottom = rng.uniform(0, 0.05, 4)
    crop = img.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))
    return {
        "resize50": _jpeg(half),
        "resize25": _jpeg(img.resize((max(1, round(w / 4)), max(1, round(h / 4))), lanczos)),
        "q70": _jpeg(img, 70), "q80": _jpeg(img, 80), "q95": _jpeg(img, 95),
        "crop": _jpeg(crop),
        "resize50_q70": _jpeg(half, 70),
    }


# ---------------------------------------------------------------- recall and false links


def percentiles(values, points=(50, 95, 99, 100)) -> str:
    import numpy as np

    return " ".join(f"p{p} {np.percentile(values, p):.0f}" for p in points)


def copy_distances(hashes: list[str | None], copy_hashes: list[str | None]):
    """Bits between each original's hash and its copy's; 10**6 (never linked) where either has no hash."""
    import numpy as np

    from skincancer.ingest.near_duplicates import hash_words

    (words, valid), (copy_words, copy_valid) = hash_words(hashes), hash_words(copy_hashes)
    return np.where(valid & copy_valid, np.bitwise_count(words ^ copy_words).sum(axis=1), 10**6)


def bench_recall(rows: list[dict], hashes: list[str | None], quick: bool) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from skincancer.ingest.near_duplicates import THRESHOLD, image_hash

    rngs = [np.random.default_rng([SEED, i]) for i in range(len(rows))]
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(copies, (row["data"] for row in rows), rngs))
        copy_hashes = {kind: list(pool.map(image_hash, (m[kind] for m in made))) for kind in COPY_TARGETS}
    figures = []
    for kind, target in COPY_TARGETS.items():
        distances = copy_distances(hashes, copy_hashes[kind])
        recall = float((distances <= THRESHOLD).mean())
        around = " ".join(f"{t}:{(distances <= t).mean():.3f}" for t in range(THRESHOLD - 4, THRESHOLD + 5, 2))
        say(f"{kind:13s} recall {recall:.4f} (target {target}); distance {percentiles(distances)}; at {around}")
        figures.append(target_figure(f"near_dup_recall_{kind}", round(recall, 6), target, "fraction", better="higher",
                                     quick=quick, images=len(rows)))
    return figures


def bench_false_links(rows: list[dict], hashes: list[str | None], quick: bool) -> list[dict]:
    import numpy as np

    from skincancer.ingest.near_duplicates import THRESHOLD, hash_words, near_duplicate_pairs

    keys = np.array([row["key"] for row in rows])
    words, _ = hash_words(hashes)
    distance = np.bitwise_count(words[:, None, :] ^ words[None, :, :]).sum(-1)
    distance[keys[:, None] == keys[None, :]] = 10**6
    nearest = distance.min(1)
    say(f"distinct lesions: nearest-other-lesion distance p0.1 {np.percentile(nearest, 0.1):.0f} "
        f"{percentiles(nearest, (1, 5, 50))}; lowest {np.sort(nearest)[:8].tolist()}")
    say(f"  images with another lesion within T+4/+8/+16: "
        f"{[int((nearest <= THRESHOLD + k).sum()) for k in (4, 8, 16)]}")
    pairs = near_duplicate_pairs(hashes)
    between = [(i, j) for i, j in pairs.tolist() if keys[i] != keys[j]]
    false = [(i, j) for i, j in between if tuple(sorted((rows[i]["id"], rows[j]["id"]))) not in SAME_LESION_BY_EYE]
    for i, j in between:
        seen = "" if (i, j) in false else "; one lesion by eye"
        say(f"  link between lesions: {rows[i]['id']} ({rows[i]['source']}) ~ {rows[j]['id']} ({rows[j]['source']})"
            f", {distance[i, j]} bits{seen}")  # keys differ: a distance the mask above left alone
    say(f"{len(pairs)} linked pairs: {len(pairs) - len(between)} within one lesion by metadata, {len(between)} "
        f"between lesions by metadata, {len(false)} of them false")
    by_metadata = len({k for pair in between for k in pair}) / len(rows)
    linked = {k for pair in false for k in pair}
    fraction = len(linked) / len(rows)
    return [target_figure("near_dup_false_links", round(fraction, 6), FALSE_LINK_TARGET, "fraction of images",
                          quick=quick, images=len(rows), linked_images=len(linked), by_metadata=round(by_metadata, 6),
                          pairs=[[rows[i]["id"], rows[j]["id"]] for i, j in between])]


# ---------------------------------------------------------------- cost


def synthetic(rows: list[dict], size: tuple[int, int], n: int) -> list[bytes]:
    """Real UDA-1 images resized to ``size`` and saved at quality 90: ISIC 2020-shaped bytes."""
    from PIL import Image

    uda = [row for row in rows if row["source"] == "uda1"][:n]
    return [_jpeg(Image.open(io.BytesIO(row["data"])).convert("RGB").resize(size, Image.Resampling.LANCZOS), 90)
            for row in uda]


def index_rates(raw: Path, uris: list[str], passes: int) -> tuple[float, float]:
    """(ours, baseline) images/s of layouts._hashes_and_sizes on these uris, with and without the perceptual hash."""
    import pandas as pd

    from skincancer.ingest import layouts

    series = pd.Series(uris)
    ours = best_of(passes, lambda: layouts._hashes_and_sizes(raw, series, {}))  # nothing hashed before: the first fetch
    real_hash = layouts.image_hash
    layouts.image_hash = lambda data: None
    try:
        baseline = best_of(passes, lambda: layouts._hashes_and_sizes(raw, series, {}))
    finally:
        layouts.image_hash = real_hash
    return len(uris) / ours, len(uris) / baseline


def bench_cost(rows: list[dict], real: Path, tmp: Path, quick: bool) -> list[dict]:
    from skincancer.ingest.layouts import _HASH_WORKERS

    passes = 1 if quick else 3
    sets = {
        "180px": [row["uri"] for row in rows if row["source"] == "9class"],
        "uda1": [row["uri"] for row in rows if row["source"] == "uda1"],
    }
    made = {"1024x768": synthetic(rows, (1024, 768), 8 if quick else 32),
            "6000x4000": synthetic(rows, (6000, 4000), 2 if quick else 8)}
    for name, datas in made.items():
        with zipfile.ZipFile(tmp / f"{name}.zip", "w", zipfile.ZIP_STORED) as archive:
            for k, data in enumerate(datas):
                archive.writestr(f"{name}/{k:05d}.jpg", data)
        sets[name] = [f"{name}.zip!{name}/{k:05d}.jpg" for k in range(len(datas))]
    figures = []
    for name, uris in sets.items():
        raw = real if name in ("180px", "uda1") else tmp
        ours, baseline = index_rates(raw, uris, passes)
        say(f"index {name:10s} {len(uris):5d} images: read+sha256+hash {ours:7.1f}/s, read+sha256 {baseline:7.1f}/s "
            f"({_HASH_WORKERS} threads, best of {passes})")
        figures.append(measurement(f"near_dup_index_{name}", ours, "images/s", quick=quick, images=len(uris),
                                   without_hash=round(baseline, 2), hash_share=round(1 - ours / baseline, 3)))
    return figures


def bench_pairs(quick: bool) -> list[dict]:
    import numpy as np

    from skincancer.ingest.near_duplicates import HASH_BITS, near_duplicate_pairs

    rng = np.random.default_rng(SEED)
    hashes = [rng.bytes(HASH_BITS // 8).hex() for _ in range(N_INDEX)]
    seconds = best_of(1 if quick else 3, lambda: near_duplicate_pairs(hashes, workers=2))
    say(f"near_duplicate_pairs on {N_INDEX} random hashes: {seconds:.2f} s (2 threads)")
    return [target_figure("near_dup_pairs_33k", seconds, PAIRS_TARGET_S, "s", quick=quick)]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if problem := real_data_problem(args.real, (NINE, UDA, HAM)):
        say(problem)
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from skincancer.ingest.near_duplicates import THRESHOLD, image_hash

    say_machine()
    rows = originals(args.real, args.quick)
    say(f"{len(rows)} distinct images ({sum(r['source'] == 'uda1' for r in rows)} UDA-1), "
        f"{len({r['key'] for r in rows})} lesions; threshold {THRESHOLD} bits")
    with ThreadPoolExecutor(2) as pool:  # Pillow and scipy release the GIL
        hashes = list(pool.map(image_hash, (row["data"] for row in rows)))
    figures = bench_recall(rows, hashes, args.quick) + bench_false_links(rows, hashes, args.quick)
    with tempfile.TemporaryDirectory(prefix="skincancer-bench-near-dup-") as tmp:
        figures += bench_cost(rows, args.real, Path(tmp), args.quick)
    figures += bench_pairs(args.quick)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
