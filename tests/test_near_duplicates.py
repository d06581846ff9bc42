"""near_duplicates: a perceptual hash that links resized, re-encoded and cropped copies, computed once at fetch."""

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from index_shapes import isic2020_shaped
from PIL import Image, ImageDraw, ImageFilter

from skincancer.core.params import FetchParams, LabelParams, SampleParams, SplitParams
from skincancer.ingest import layouts
from skincancer.ingest.fetch import fetch
from skincancer.ingest.layouts import read_layout
from skincancer.ingest.near_duplicates import HEX_CHARS, THRESHOLD, hash_words, image_hash, near_duplicate_pairs
from skincancer.ingest.sample import write_sample
from skincancer.split.split import plan_split

SIZE = (160, 120)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes: the reference the blockwise word comparison must agree with."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def hex_hashes(words: np.ndarray) -> list[str]:
    """(n, 4) uint64 words -> hex hashes, most significant word first: what hash_words reads back."""
    return ["".join(f"{word:016x}" for word in row) for row in words.tolist()]


def lesion(seed: int) -> Image.Image:
    """Skin with a few dark irregular blobs near the centre: what every dermoscopy image looks like."""
    rng = np.random.default_rng(seed)
    skin = tuple(int(v) for v in rng.integers([170, 110, 90], [235, 175, 150]))
    img = Image.new("RGB", SIZE, skin)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.normal([SIZE[0] / 2, SIZE[1] / 2], [20, 15])
        points = [(cx + r * np.cos(a), cy + r * np.sin(a))
                  for a, r in zip(np.linspace(0, 2 * np.pi, 9)[:-1], rng.uniform(8, 40, 8), strict=True)]
        draw.polygon(points, fill=tuple(int(v) for v in rng.integers([40, 20, 10], [140, 90, 70])))
    return img.filter(ImageFilter.GaussianBlur(2))


def jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def copies(img: Image.Image) -> dict[str, bytes]:
    w, h = img.size
    c = round(0.05 * w), round(0.05 * h)
    return {
        "resize50": jpeg(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "resize25": jpeg(img.resize((w // 4, h // 4), Image.Resampling.LANCZOS)),
        "q70": jpeg(img, 70),
        "crop5": jpeg(img.crop((c[0], c[1], w - c[0], h - c[1]))),
        "png": _png(img),
    }


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def originals() -> list[Image.Image]:
    return [lesion(seed) for seed in range(12)]


def test_hash_is_fixed_width_hex(originals):
    value = image_hash(jpeg(originals[0]))
    assert isinstance(value, str) and len(value) == HEX_CHARS and int(value, 16) >= 0


@pytest.mark.parametrize("name", ["resize50", "resize25", "q70", "crop5", "png"])
def test_copies_link_to_their_original(originals, name):
    for img in originals:
        original, copy = image_hash(jpeg(img)), image_hash(copies(img)[name])
        assert hamming(original, copy) <= THRESHOLD, name


def test_distinct_images_do_not_link(originals):
    hashes = [image_hash(jpeg(img)) for img in originals]
    assert near_duplicate_pairs(hashes).shape == (0, 2)
    assert min(hamming(a, b) for a, b in itertools.combinations(hashes, 2)) > THRESHOLD


def test_exif_orientation_is_applied(originals):
    rotated = originals[0].transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are the upright image turned 90 CCW
    rotated.save(buffer, "JPEG", quality=95, exif=exif)
    assert hamming(image_hash(buffer.getvalue()), image_hash(jpeg(originals[0]))) <= THRESHOLD


@pytest.mark.parametrize("data", [b"", b"not an image", jpeg(lesion(0))[:200], b"\xff\xd8\xff" + bytes(100)])
def test_bad_bytes_have_no_hash_and_never_link(data):
    assert image_hash(data) is None
    pairs = near_duplicate_pairs([None, pd.NA, image_hash(data), image_hash(jpeg(lesion(0)))])
    assert pairs.shape == (0, 2)


def test_pairs_equal_brute_force():
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**64 - 1, (700, 4), dtype=np.uint64, endpoint=True)
    flips = rng.integers(0, 2, (150, 4, 64)).astype(bool) & (rng.random((150, 1, 1)) < rng.uniform(0.02, 0.3))
    masks = np.packbits(flips, axis=-1, bitorder="little").view(np.uint64)[..., 0]
    words[550:] = words[rng.integers(0, 550, 150)] ^ masks  # near copies at every distance around the threshold
    hashes: list[str | None] = hex_hashes(words)
    hashes[3] = None
    assert hash_words(hashes)[0][5].tolist() == words[5].tolist()
    for threshold in (0, THRESHOLD):
        expected = [
            [i, j] for i, j in itertools.combinations(range(len(hashes)), 2)
            if hashes[i] and hashes[j] and hamming(hashes[i], hashes[j]) <= threshold
        ]
        assert len(expected) > 20
        for workers in (1, 2):
            assert near_duplicate_pairs(hashes, threshold, workers=workers).tolist() == expected


def test_read_layout_fills_image_hash(tmp_path):
    write_sample(tmp_path / "sample", n_images=12, seed=1)
    index = read_layout("isic2020", tmp_path / "sample" / "isic2020", source="sample", raw_root=tmp_path)
    assert isinstance(index["image_hash"].dtype, pd.StringDtype)
    assert index["image_hash"].notna().all() and (index["image_hash"].str.len() == HEX_CHARS).all()


def test_a_rerun_of_fetch_decodes_no_image_it_hashed_before(tmp_path, monkeypatch):
    params = FetchParams(sample=SampleParams(n_images=40))
    first = fetch(params, tmp_path / "raw")
    decoded = []
    monkeypatch.setattr(layouts, "image_hash", lambda data: decoded.append(data) or "0" * HEX_CHARS)
    again = fetch(params, tmp_path / "raw")
    assert decoded == [] and again["image_hash"].tolist() == first["image_hash"].tolist()


def test_the_split_drops_a_near_duplicate_copy_and_says_which_rule_linked_it(originals):
    index = isic2020_shaped(n_patients=40).iloc[:200].reset_index(drop=True)
    index["benign_malignant"] = np.where(np.arange(len(index)) % 5 == 0, "malignant", "benign")
    index["image_hash"] = [image_hash(jpeg(lesion(100 + i))) for i in range(len(index))]
    copy = index.iloc[[0]].assign(image_id="ISIC_9000000", source="isic2019", patient_id=pd.NA,
                                  sha256="c" * 64, image_hash=image_hash(copies(lesion(100))["resize25"]))
    plan = plan_split(pd.concat([index, copy], ignore_index=True), SplitParams(), LabelParams())
    # the copy's source sorts first, so it is the one kept
    assert plan.removed[["image_id", "reason", "kept_image_id", "linked_by"]].values.tolist() == [
        [index.loc[0, "image_id"], "duplicate", "ISIC_9000000", "near_duplicate"]]
    assert len(plan.manifest) == len(index)
