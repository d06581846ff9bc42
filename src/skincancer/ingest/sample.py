"""Synthetic ISIC-like dermoscopy data in the real archive layouts, so the whole pipeline runs offline.

Melanoma differs from benign lesions by the ABCD cues (asymmetry, border irregularity, colour
variegation, diameter), each drawn from overlapping class distributions: a good classifier does well
but not perfectly. Seborrheic keratoses (large, tan, waxy, benign) are the hard negatives.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw

from skincancer.core.atomic import atomic_dir
from skincancer.ingest.layouts import ISIC2020_COLUMNS, ISIC2020_CSV, ISIC2020_ZIP

UDACITY = "isic2017-udacity"
ISIC2020 = "isic2020"
UDACITY_SHARE = 0.4
DIAGNOSIS_FRACTIONS = {"nevus": 0.65, "seborrheic_keratosis": 0.15, "melanoma": 0.20}
UDACITY_SPLITS = {"train": 0.70, "valid": 0.15, "test": 0.15}
ISIC2020_SPELLING = {"nevus": "nevus", "melanoma": "melanoma", "seborrheic_keratosis": "seborrheic keratosis"}
ANATOM_SITES = {
    "torso": 0.50,
    "lower extremity": 0.25,
    "upper extremity": 0.14,
    "head/neck": 0.05,
    "palms/soles": 0.015,
    "oral/genital": 0.005,
    "": 0.04,
}
JPEG_QUALITY = 90
RENDER_SCALE = 2  # drawn at half size then upsampled: the cues are low-frequency, and it is 4x faster
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SUPERSAMPLE = 2  # marks are rasterised at this factor, then averaged down (antialiasing)
Marks = Callable[[ImageDraw.ImageDraw], None]

# Per-class (mean, sd) of each ABCD cue; the class distributions overlap on purpose.
# asymmetry: RMS of low radius harmonics; border: RMS of high ones; variegation: 0..1 extra colours;
# diameter: radius / short image side; darkness: base colour from light (0) to dark (1) brown.
CUES = {
    "melanoma": {
        "asymmetry": (0.22, 0.09),
        "border": (0.045, 0.025),
        "variegation": (0.6, 0.22),
        "diameter": (0.27, 0.07),
        "darkness": (0.65, 0.2),
    },
    "nevus": {
        "asymmetry": (0.10, 0.07),
        "border": (0.018, 0.012),
        "variegation": (0.25, 0.18),
        "diameter": (0.20, 0.06),
        "darkness": (0.5, 0.2),
    },
    "seborrheic_keratosis": {
        "asymmetry": (0.15, 0.08),
        "border": (0.028, 0.016),
        "variegation": (0.35, 0.2),
        "diameter": (0.30, 0.08),
        "darkness": (0.3, 0.2),
    },
}
CUE_BOUNDS = {
    "asymmetry": (0.0, 0.45),
    "border": (0.0, 0.1),
    "variegation": (0.0, 1.0),
    "diameter": (0.08, 0.42),
    "darkness": (0.0, 1.0),
}

# Variegation colours (RGB in 0..1) and how likely each class shows them.
PALETTE = {
    "dark_brown": (0.30, 0.17, 0.10),
    "black": (0.09, 0.07, 0.07),
    "blue_grey": (0.42, 0.47, 0.56),
    "red": (0.72, 0.30, 0.30),
    "light_brown": (0.62, 0.45, 0.32),
}
PALETTE_WEIGHTS = {
    "melanoma": (0.30, 0.25, 0.25, 0.15, 0.05),
    "nevus": (0.55, 0.08, 0.05, 0.04, 0.28),
    "seborrheic_keratosis": (0.45, 0.08, 0.04, 0.03, 0.40),
}
STREAK_PROBABILITY = {"melanoma": 0.35, "nevus": 0.06, "seborrheic_keratosis": 0.04}


@dataclass(frozen=True)
class _Case:
    image_id: str
    diagnosis: str
    archive: str  # zip file name inside the layout folder
    member: str  # zip member name
    seed: np.random.SeedSequence


def _allocate(n: int, fractions: Iterable[float]) -> list[int]:
    """Split n into integer counts by largest remainder, so small samples keep every class."""
    shares = np.asarray(list(fractions), dtype=float) * n
    counts = np.floor(shares).astype(int)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def _repeat(names: Iterable[str], counts: Iterable[int]) -> list[str]:
    return [name for name, count in zip(names, counts) for _ in range(count)]


def _diagnoses(n: int, rng: np.random.Generator) -> list[str]:
    labels = _repeat(DIAGNOSIS_FRACTIONS, _allocate(n, DIAGNOSIS_FRACTIONS.values()))
    return [labels[i] for i in rng.permutation(n)]


def _udacity_splits(diagnoses: list[str], rng: np.random.Generator) -> list[str]:
    """Stratified 70/15/15 per class, as the Udacity zips keep all three classes in every split."""
    splits = [""] * len(diagnoses)
    for diagnosis in DIAGNOSIS_FRACTIONS:
        members = [i for i in rng.permutation(len(diagnoses)) if diagnoses[i] == diagnosis]
        names = _repeat(UDACITY_SPLITS, _allocate(len(members), UDACITY_SPLITS.values()))
        for i, name in zip(members, names):
            splits[i] = name
    return splits


def _plan(n_images: int, plan_seed: np.random.SeedSequence, image_seed: np.random.SeedSequence) -> list[_Case]:
    """Give every image its layout, archive, diagnosis and own seed (independent, so parallelisable)."""
    rng = np.random.default_rng(plan_seed)
    seeds = image_seed.spawn(n_images)
    n_udacity = round(n_images * UDACITY_SHARE)
    diagnoses = _diagnoses(n_udacity, rng)
    cases = [
        _Case(f"ISIC_{i:07d}", diagnosis, f"{split}.zip", f"{split}/{diagnosis}/ISIC_{i:07d}.jpg", seeds[i])
        for i, (diagnosis, split) in enumerate(zip(diagnoses, _udacity_splits(diagnoses, rng)))
    ]
    for j, diagnosis in enumerate(_diagnoses(n_images - n_udacity, rng)):
        image_id = f"ISIC_{2_000_000 + j:07d}"
        cases.append(_Case(image_id, diagnosis, ISIC2020_ZIP, f"train/{image_id}.jpg", seeds[n_udacity + j]))
    return cases


# ---------------------------------------------------------------- arithmetic the same on every CPU
# numpy picks its exp, arctan2, sin and cos by the CPU's SIMD features (AVX-512, AVX2 with FMA, SSE), and their
# results differ in the last bits, so one image of the sample came out different on another x86-64 CPU. The
# pixels are drawn with + - * / sqrt and clip only: IEEE-exact whichever code path runs them.

_EDGE_HALF_WIDTH = 4.0  # a logistic edge reaches 2% and 98% about this far out; smoothstep reaches 0 and 1 there
# atan on [0, 1] as an odd polynomial (Abramowitz & Stegun 4.4.49): |error| < 1e-5 rad, a 1e-6 turn of the rim
_ATAN_COEFFICIENTS = (0.9998660, -0.3302995, 0.1801410, -0.0851330, 0.0208351)


def _falling_edge(z: np.ndarray) -> np.ndarray:
    """1 well inside (z < 0), 0 well outside, falling smoothly across the edge: a cubic smoothstep."""
    t = np.clip(0.5 - z * np.float32(0.5 / _EDGE_HALF_WIDTH), 0, 1)
    return t * t * (3 - 2 * t)


def _turns(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The angle of (dx, dy) in turns, in [0, 1): arctan2 / 2 pi, from a polynomial and quadrant folding."""
    ay, ax = np.abs(dy).astype(np.float64), np.abs(dx).astype(np.float64)
    big, small = np.maximum(ax, ay), np.minimum(ax, ay)
    a = small / np.where(big > 0, big, 1)
    a2 = a * a
    poly = np.float64(_ATAN_COEFFICIENTS[-1])
    for coefficient in reversed(_ATAN_COEFFICIENTS[:-1]):
        poly = poly * a2 + coefficient
    angle = a * poly  # in [0, pi/4], folded below
    angle = np.where(ay > ax, np.pi / 2 - angle, angle)
    angle = np.where(dx < 0, np.pi - angle, angle)
    angle = np.where(dy < 0, 2 * np.pi - angle, angle)
    return np.minimum(angle / (2 * np.pi), np.nextafter(1.0, 0))


# ---------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Unit-variance low-frequency noise: a coarse random grid upsampled bicubically (fast, no loops)."""
    gh, gw = max(2, round(cells * h / max(h, w)) + 2), max(2, round(cells * w / max(h, w)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): landscape, portrait or square, sides in 320..640 like resized dermoscopy."""
    short = int(rng.integers(20, 31)) * 16
    shape = rng.choice(3, p=(0.5, 0.2, 0.3))
    if shape == 2:
        return short, short
    long = min(640, round(short * rng.choice((4 / 3, 3 / 2)) / 16) * 16)
    return (short, long) if shape == 0 else (long, short)


def _skin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tone = rng.beta(2.0, 3.0)
    light, dark = np.array((0.95, 0.80, 0.72)), np.array((0.58, 0.40, 0.30))
    colour = (light + (dark - light) * tone + rng.normal(0, 0.025, 3)).astype(np.float32)
    shading = 1 + 0.07 * _smooth_noise(rng, h, w, rng.uniform(2, 4))
    texture = 1 + 0.025 * rng.standard_normal((h, w), dtype=np.float32) + 0.02 * _smooth_noise(rng, h, w, 40)
    redness = np.clip(_smooth_noise(rng, h, w, 3), 0, None) * rng.uniform(0, 0.05)
    skin = colour * (shading * texture)[..., None]
    skin[..., 1:] -= redness[..., None]
    return skin


def _cues(rng: np.random.Generator, diagnosis: str) -> dict[str, float]:
    drawn = {}
    for name, (mean, sd) in CUES[diagnosis].items():
        low, high = CUE_BOUNDS[name]
        drawn[name] = float(np.clip(rng.normal(mean, sd), low, high))
    return drawn


def _radius_profile(rng: np.random.Generator, asymmetry: float, border: float, n: int = 720) -> np.ndarray:
    """r(theta)/R = 1 + low harmonics (asymmetry) + high harmonics (border irregularity), RMS-scaled."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)

    def harmonics(ks: np.ndarray, rms: float) -> np.ndarray:
        weights = rng.uniform(0.3, 1.0, len(ks)) / ks
        phases = rng.uniform(0, 2 * np.pi, len(ks))
        wave = (weights[:, None] * np.cos(ks[:, None] * theta + phases[:, None])).sum(0)
        return wave * (rms / (wave.std() + 1e-9))

    low = harmonics(np.arange(1, 4), asymmetry)
    high = harmonics(np.arange(4, 17), border)
    return np.clip(1 + low + high, 0.35, None).astype(np.float32)


def _lesion_colour(rng: np.random.Generator, diagnosis: str, darkness: float) -> np.ndarray:
    if diagnosis == "seborrheic_keratosis":
        light, dark = np.array((0.74, 0.57, 0.43)), np.array((0.50, 0.35, 0.25))
    else:
        light, dark = np.array((0.60, 0.40, 0.30)), np.array((0.32, 0.18, 0.13))
    colour = (light + (dark - light) * darkness) * rng.normal(1, 0.04) + rng.normal(0, 0.01, 3)
    return colour.astype(np.float32)


def _blend(image: np.ndarray, weight: np.ndarray, colour: Iterable[float]) -> None:
    """In place: image = image * (1 - weight) + colour * weight."""
    image += weight[..., None] * (np.asarray(colour, dtype=np.float32) - image)


def _variegation(
    rng: np.random.Generator, lesion: np.ndarray, inner: np.ndarray, diagnosis: str, amount: float, radius: float
) -> None:
    """Patches of other colours: more colours and more area as the variegation cue grows."""
    h, w, _ = lesion.shape
    names = list(PALETTE)
    for _ in range(rng.binomial(4, amount)):
        colour = PALETTE[names[rng.choice(len(names), p=PALETTE_WEIGHTS[diagnosis])]]
        coverage = np.clip(amount * rng.uniform(0.25, 0.7), 0.03, 0.6)
        threshold = NormalDist().inv_cdf(1 - coverage)
        field = _smooth_noise(rng, h, w, max(h, w) / radius * rng.uniform(1.0, 2.0))
        weight = np.clip((field - threshold) / 0.4, 0, 1) * inner * rng.uniform(0.6, 0.95)
        _blend(lesion, weight, colour)


def _marks_mask(h: int, w: int, draw_marks: Marks) -> np.ndarray:
    """Rasterise dots/lines with PIL (C speed, antialiased by supersampling) into a 0..1 mask."""
    canvas = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    draw_marks(ImageDraw.Draw(canvas))
    return np.asarray(canvas.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255


def _dots(rng: np.random.Generator, centre: np.ndarray, radius: float, count: int, size: float) -> Marks:
    def draw(canvas: ImageDraw.ImageDraw) -> None:
        angles = rng.uniform(0, 2 * np.pi, count)
        dists = radius * np.sqrt(rng.uniform(0, 0.7, count))
        sizes = size * rng.uniform(0.6, 1.4, count)
        for a, d, s in zip(angles, dists, _SUPERSAMPLE * sizes):
            x, y = _SUPERSAMPLE * (centre[1] + d * np.cos(a)), _SUPERSAMPLE * (centre[0] + d * np.sin(a))
            canvas.ellipse((x - s, y - s, x + s, y + s), fill=255)

    return draw


def _streaks(rng: np.random.Generator, centre: np.ndarray, profile: np.ndarray, radius: float, width: float) -> Marks:
    """Radial streaks/pseudopods crossing the border, a melanoma-specific pattern."""

    def draw(canvas: ImageDraw.ImageDraw) -> None:
        for a in rng.uniform(0, 2 * np.pi, rng.integers(6, 16)):
            r = radius * profile[int(a / (2 * np.pi) * len(profile)) % len(profile)]
            start, end = r * rng.uniform(0.7, 0.9), r * rng.uniform(1.05, 1.25)
            points = [
                (_SUPERSAMPLE * (centre[1] + d * np.cos(a)), _SUPERSAMPLE * (centre[0] + d * np.sin(a)))
                for d in (start, end)
            ]
            canvas.line(points, fill=255, width=max(2, round(_SUPERSAMPLE * width)))

    return draw


def _hairs(rng: np.random.Generator, h: int, w: int, scale: float) -> Marks:
    """A few dark hairs as quadratic Bezier curves crossing the image."""

    def draw(canvas: ImageDraw.ImageDraw) -> None:
        t = np.linspace(0, 1, 24)[:, None]
        for _ in range(rng.integers(1, 9)):
            p0, p1, p2 = rng.uniform(-0.1, 1.1, (3, 2)) * (_SUPERSAMPLE * w, _SUPERSAMPLE * h)
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
            width = max(2, round(_SUPERSAMPLE * scale * rng.uniform(0.8, 2.2)))
            canvas.line([tuple(p) for p in curve], fill=255, width=width, joint="curve")

    return draw


def _bounding_box(centre: np.ndarray, reach: float, h: int, w: int) -> tuple[slice, slice]:
    (y0, x0) = np.maximum(np.floor(centre - reach), 0).astype(int)
    (y1, x1) = np.minimum(np.ceil(centre + reach).astype(int), (h, w))
    return slice(y0, y1), slice(x0, x1)


def _soft_masks(
    shape: tuple[int, ...], centre: np.ndarray, edge_of: np.ndarray, softness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha of the whole lesion, alpha of its inner part, 1 at the centre falling to 0 at the edge)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    dy, dx = (yy - centre[0]).astype(np.float32), (xx - centre[1]).astype(np.float32)
    dist = np.sqrt(dy * dy + dx * dx)
    index = (_turns(dy, dx) * len(edge_of)).astype(np.int32) % len(edge_of)
    edge = edge_of[index]
    alpha = _falling_edge((dist - edge) / softness)
    inner = _falling_edge((dist - 0.85 * edge) / (2 * softness))
    return alpha, inner, np.clip(1 - dist / np.maximum(edge, 1), 0, 1)


def _lesion(rng: np.random.Generator, image: np.ndarray, diagnosis: str, cues: dict[str, float]) -> None:
    """Paint the lesion in place, computing only inside its bounding box (most of the cost)."""
    h, w, _ = image.shape
    scale = min(h, w) / 400
    radius = cues["diameter"] * min(h, w)
    centre = np.array((h, w)) / 2 + rng.uniform(-0.08, 0.08, 2) * min(h, w)
    profile = _radius_profile(rng, cues["asymmetry"], cues["border"])
    softness = rng.uniform(1.0, 4.0) * scale
    rows, cols = _bounding_box(centre, 1.3 * radius * float(profile.max()) + 8 * softness, h, w)
    crop = image[rows, cols]
    centre = centre - (rows.start, cols.start)
    alpha, inner, centrality = _soft_masks(crop.shape, centre, radius * profile, softness)

    lesion = np.broadcast_to(_lesion_colour(rng, diagnosis, cues["darkness"]), crop.shape).copy()
    lesion *= (1 - rng.uniform(0, 0.3) * centrality)[..., None]
    if diagnosis == "seborrheic_keratosis":  # waxy, cerebriform surface
        lesion *= (1 + 0.08 * _smooth_noise(rng, *crop.shape[:2], max(crop.shape) / (12 * scale)))[..., None]
    _variegation(rng, lesion, inner, diagnosis, cues["variegation"], radius)
    dots = rng.poisson(12 * cues["variegation"])
    if dots:  # milia-like cysts on keratoses, dark globules otherwise
        colour = (0.92, 0.88, 0.78) if diagnosis == "seborrheic_keratosis" else PALETTE["black"]
        mask = _marks_mask(*crop.shape[:2], _dots(rng, centre, radius, dots, 2.5 * scale))
        _blend(lesion, mask * inner * 0.85, colour)
    crop += alpha[..., None] * (lesion - crop)
    if rng.random() < STREAK_PROBABILITY[diagnosis]:
        mask = _marks_mask(*crop.shape[:2], _streaks(rng, centre, profile, radius, 1.5 * scale))
        _blend(crop, mask * 0.8, PALETTE["dark_brown"])


def _vignette(rng: np.random.Generator, image: np.ndarray) -> None:
    """The dark circular rim of a contact dermoscope."""
    h, w, _ = image.shape
    yy, xx = np.ogrid[:h, :w]
    dist = np.sqrt(((yy - h / 2) ** 2 + (xx - w / 2) ** 2).astype(np.float32))
    rim = 0.5 * np.hypot(h, w) * rng.uniform(0.8, 0.97)
    weight = _falling_edge((rim - dist) / (0.02 * min(h, w)))
    _blend(image, weight, (0.03, 0.03, 0.03))


def draw_image(seed: np.random.SeedSequence, diagnosis: str) -> np.ndarray:
    """One synthetic dermoscopy image (H x W x 3 uint8) for a diagnosis, fully determined by its seed."""
    rng = np.random.default_rng(seed)
    full_h, full_w = _image_size(rng)
    h, w = full_h // RENDER_SCALE, full_w // RENDER_SCALE
    image = _skin(rng, h, w)
    _lesion(rng, image, diagnosis, _cues(rng, diagnosis))
    if rng.random() < 0.7:
        hair = _marks_mask(h, w, _hairs(rng, h, w, min(h, w) / 400))
        _blend(image, hair * 0.85, (0.14, 0.10, 0.08))
    if rng.random() < 0.35:
        _vignette(rng, image)
    small = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(small.resize((full_w, full_h), Image.Resampling.BICUBIC))


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------- writing


def _zip_info(name: str) -> zipfile.ZipInfo:
    """Fixed date, system and mode, so the same images give a byte-identical archive."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.create_system = 3
    is_dir = name.endswith("/")
    info.external_attr = ((0o40755 if is_dir else 0o100644) << 16) | (0x10 if is_dir else 0)
    info.compress_type = zipfile.ZIP_STORED
    return info


def _drawn_jpeg(case: _Case) -> bytes:
    return encode_jpeg(draw_image(case.seed, case.diagnosis))


def _write_zip(path: Path, cases: list[_Case]) -> None:
    """Members sorted by name, each preceded by its not-yet-written folders, as archivers write them. Images are
    drawn on every core (numpy and Pillow release the GIL); each has its own seed, so the bytes do not depend on
    the threads."""
    written: set[str] = set()
    cases = sorted(cases, key=lambda c: c.member)
    with zipfile.ZipFile(path, "w") as archive, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for case, jpeg in zip(cases, pool.map(_drawn_jpeg, cases)):
            parts = case.member.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                folder = "/".join(parts[:depth]) + "/"
                if folder not in written:
                    written.add(folder)
                    archive.writestr(_zip_info(folder), b"")
            archive.writestr(_zip_info(case.member), jpeg)


def _patients(n: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(patient_id, sex, age_approx) per image: 1-6 images per patient, scattered over the ids as in ISIC 2020."""
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    ids = rng.choice(9_000_000, len(sizes), replace=False) + 1_000_000
    people = []
    for patient, size in zip(ids, sizes):
        missing = rng.random() < 0.02  # ISIC 2020 leaves sex and age empty for a few patients
        sex = "" if missing else str(rng.choice(("male", "female")))
        age = "" if missing else f"{5 * rng.integers(3, 18):.1f}"
        people += [(f"IP_{patient:07d}", sex, age)] * size
    return [people[i] for i in rng.permutation(n)]


def _isic2020_csv(cases: list[_Case], rng: np.random.Generator) -> bytes:
    sites, weights = list(ANATOM_SITES), np.array(list(ANATOM_SITES.values()))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ISIC2020_COLUMNS)
    for case, person in zip(cases, _patients(len(cases), rng)):
        site = sites[rng.choice(len(sites), p=weights / weights.sum())]
        malignant = case.diagnosis == "melanoma"
        verdict = "malignant" if malignant else "benign"
        writer.writerow((case.image_id, *person, site, ISIC2020_SPELLING[case.diagnosis], verdict, int(malignant)))
    return buffer.getvalue().encode("utf-8")


def write_sample(out_dir: Path, n_images: int = 1200, seed: int = 0) -> dict[str, Path]:
    """Write both layouts under ``out_dir``; same (n_images, seed) gives byte-identical files.

    Each layout folder appears in one rename, so an interrupted run leaves no half archive.
    """
    out_dir = Path(out_dir)
    plan_seed, image_seed, meta_seed = np.random.SeedSequence(seed).spawn(3)
    cases = _plan(n_images, plan_seed, image_seed)
    folders = {UDACITY: out_dir / UDACITY, ISIC2020: out_dir / ISIC2020}
    with atomic_dir(folders[UDACITY]) as tmp:
        for split in UDACITY_SPLITS:
            _write_zip(tmp / f"{split}.zip", [c for c in cases if c.archive == f"{split}.zip"])
    isic2020 = [c for c in cases if c.archive == ISIC2020_ZIP]
    with atomic_dir(folders[ISIC2020]) as tmp:
        _write_zip(tmp / ISIC2020_ZIP, isic2020)
        (tmp / ISIC2020_CSV).write_bytes(_isic2020_csv(isic2020, np.random.default_rng(meta_seed)))
    return folders
