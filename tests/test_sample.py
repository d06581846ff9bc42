import csv
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skincancer.ingest.sample import write_sample

N = 60
ISIC2020_HEADER = "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"
SITES = {"torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital", ""}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, n_images=N, seed=0)


def images(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def ground_truth(folders) -> list[dict[str, str]]:
    with open(folders["isic2020"] / "ISIC_2020_Training_GroundTruth.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def udacity_members(folders) -> dict[str, bytes]:
    members = {}
    for split in ("train", "valid", "test"):
        members |= images(folders["isic2017-udacity"] / f"{split}.zip")
    return members


def test_returns_both_layout_folders_and_nothing_else(sample):
    out, folders = sample
    assert folders == {"isic2017-udacity": out / "isic2017-udacity", "isic2020": out / "isic2020"}
    assert sorted(p.name for p in out.iterdir()) == ["isic2017-udacity", "isic2020"]
    assert sorted(p.name for p in folders["isic2017-udacity"].iterdir()) == ["test.zip", "train.zip", "valid.zip"]
    assert sorted(p.name for p in folders["isic2020"].iterdir()) == [
        "ISIC_2020_Training_GroundTruth.csv",
        "ISIC_2020_Training_JPEG.zip",
    ]


def test_same_seed_is_byte_identical_and_another_seed_differs(sample, tmp_path):
    out, _ = sample
    write_sample(tmp_path / "again", n_images=N, seed=0)
    write_sample(tmp_path / "other", n_images=N, seed=1)
    first = tree_bytes(out)
    assert tree_bytes(tmp_path / "again") == first
    other = tree_bytes(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first)


# numpy chooses exp, arctan2, sin and cos by the CPU's SIMD features, libjpeg-turbo its DCT and colour paths; these
# environments make this machine take the paths of a CPU without AVX-512 (AMD EPYC), without AVX2 and FMA, and
# without any SIMD in libjpeg-turbo. 160 images: the drawing before the fix already differed within them.
SIMD_PATHS = {
    "native": {},
    "no AVX-512": {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "no AVX2, no FMA, no libjpeg SIMD": {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
                                        "JSIMD_FORCENONE": "1"},
}
SAMPLE_160_DIGEST = "ac5f67adfbfd2209b203c7e254fc0ea5d3f0623779dd2ebae419fa31ce285edb"  # sha256 over (path, bytes) of write_sample(n_images=160, seed=0), in path order
DIGEST_SCRIPT = """
import hashlib, sys, tempfile
from pathlib import Path
from skincancer.ingest.sample import write_sample
out = Path(tempfile.mkdtemp())
write_sample(out, n_images=160, seed=0)
digest = hashlib.sha256()
for path in sorted(p for p in out.rglob("*") if p.is_file()):
    digest.update(path.relative_to(out).as_posix().encode() + b"\\0" + path.read_bytes())
print(digest.hexdigest())
"""


def test_the_sample_is_the_same_bytes_on_every_simd_path_of_an_x86_64_cpu():
    """So the demo's committed dvc.lock holds on an AMD EPYC as on an Intel Xeon: no stage reruns on a fresh clone."""
    digests = {}
    for name, env in SIMD_PATHS.items():
        result = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT], env={**os.environ, **env},
                                capture_output=True, text=True, check=True)
        digests[name] = result.stdout.strip()
    assert digests == dict.fromkeys(SIMD_PATHS, SAMPLE_160_DIGEST)


def test_udacity_layout_members_and_splits(sample):
    _, folders = sample
    counts = {}
    for split in ("train", "valid", "test"):
        with zipfile.ZipFile(folders["isic2017-udacity"] / f"{split}.zip") as archive:
            infos = archive.infolist()
        files = [i.filename for i in infos if not i.is_dir()]
        pattern = re.compile(rf"^{split}/(melanoma|nevus|seborrheic_keratosis)/ISIC_00\d{{5}}\.jpg$")
        assert files and all(pattern.match(name) for name in files), files
        assert files == sorted(files)
        folders_written = {f"{split}/"} | {f"{split}/{name.split('/')[1]}/" for name in files}
        assert {i.filename for i in infos if i.is_dir()} == folders_written
        assert all(i.compress_type == zipfile.ZIP_STORED and i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        counts[split] = len(files)
    total = sum(counts.values())
    assert total == round(0.4 * N)
    assert 0.6 <= counts["train"] / total <= 0.8
    assert 0.1 <= counts["valid"] / total <= 0.25 and 0.1 <= counts["test"] / total <= 0.25


def test_isic2020_layout_zip_and_ground_truth(sample):
    _, folders = sample
    members = images(folders["isic2020"] / "ISIC_2020_Training_JPEG.zip")
    assert all(re.match(r"^train/ISIC_2\d{6}\.jpg$", name) for name in members)
    text = (folders["isic2020"] / "ISIC_2020_Training_GroundTruth.csv").read_bytes().decode()
    assert text.splitlines()[0] == ISIC2020_HEADER and "\r" not in text
    rows = ground_truth(folders)
    assert len(rows) == N - round(0.4 * N)
    assert sorted(f"train/{r['image_name']}.jpg" for r in rows) == sorted(members)
    for row in rows:
        assert re.match(r"^IP_\d{7}$", row["patient_id"])
        assert row["sex"] in {"male", "female", ""}
        assert row["age_approx"] == "" or float(row["age_approx"]) % 5 == 0
        assert row["anatom_site_general_challenge"] in SITES
        assert row["diagnosis"] in {"nevus", "melanoma", "seborrheic keratosis"}
        malignant = row["diagnosis"] == "melanoma"
        assert row["benign_malignant"] == ("malignant" if malignant else "benign")
        assert row["target"] == str(int(malignant))
    per_patient = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], set()).add((row["sex"], row["age_approx"]))
    assert all(len(attributes) == 1 for attributes in per_patient.values())  # one sex/age per patient
    sizes = np.unique([r["patient_id"] for r in rows], return_counts=True)[1]
    assert sizes.max() <= 6 and len(sizes) < len(rows)


def test_ids_are_distinct_across_layouts(sample):
    _, folders = sample
    udacity = {Path(name).stem for name in udacity_members(folders)}
    isic2020 = {r["image_name"] for r in ground_truth(folders)}
    assert len(udacity) == round(0.4 * N) and not udacity & isic2020


def test_class_mix_is_about_twenty_percent_malignant(sample):
    _, folders = sample
    diagnoses = [name.split("/")[1] for name in udacity_members(folders)]
    diagnoses += [r["diagnosis"].replace(" ", "_") for r in ground_truth(folders)]
    assert set(diagnoses) == {"melanoma", "nevus", "seborrheic_keratosis"}
    assert 0.12 <= diagnoses.count("melanoma") / len(diagnoses) <= 0.3
    assert diagnoses.count("nevus") > diagnoses.count("seborrheic_keratosis")


def test_images_are_rgb_jpegs_of_several_sizes_and_aspects(sample):
    _, folders = sample
    blobs = [*udacity_members(folders).values(), *images(folders["isic2020"] / "ISIC_2020_Training_JPEG.zip").values()]
    sizes = set()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert all(320 <= side <= 640 for size in sizes for side in size)
    assert len(sizes) >= 5
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)


def test_melanoma_cues_survive_downsizing_to_64px(sample):
    """At 64x64 melanomas still show more very dark area and more colour spread than nevi, on average."""
    _, folders = sample
    by_class: dict[str, list[tuple[float, float]]] = {"melanoma": [], "nevus": []}
    for name, blob in udacity_members(folders).items():
        diagnosis = name.split("/")[1]
        if diagnosis in by_class:
            pixels = np.asarray(Image.open(io.BytesIO(blob)).resize((64, 64)), dtype=np.float32) / 255
            centre = pixels[16:48, 16:48].reshape(-1, 3)
            by_class[diagnosis].append(((centre.mean(1) < 0.3).mean(), centre.std(0).mean()))
    melanoma, nevus = np.mean(by_class["melanoma"], axis=0), np.mean(by_class["nevus"], axis=0)
    assert melanoma[0] > nevus[0] and melanoma[1] > nevus[1]


def test_interrupted_write_leaves_no_half_archive(tmp_path, monkeypatch):
    from skincancer.ingest import sample as sample_module

    real, calls = sample_module.encode_jpeg, []

    def failing(pixels):
        calls.append(1)
        if len(calls) == 30:  # inside the isic2020 zip: the Udacity layout is already complete
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(sample_module, "encode_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        write_sample(tmp_path, n_images=N, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["isic2017-udacity"]
    assert sorted(p.name for p in (tmp_path / "isic2017-udacity").iterdir()) == ["test.zip", "train.zip", "valid.zip"]
