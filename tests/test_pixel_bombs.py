"""Images just under the pixel cap: every stage that decodes (fetch's near-duplicate hash, the shard stage's
encoder, `skincancer predict`) holds at most one full-size copy of one, gives up undecoded on one over
shard.max_pixels, and waits its turn in images.DECODE_BUDGET when several threads decode at once.

The peaks are the VmHWM of a fresh interpreter doing one thing, above its own after the imports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from skincancer.core.images import DecodeBudget
from skincancer.core.params import ShardParams
from skincancer.ingest.layouts import read_layout
from skincancer.ingest.near_duplicates import image_hash
from skincancer.ingest.sample import write_sample

SIDE = 13_000  # 169 M pixels: just under Pillow's hard cap, which the default shard.max_pixels equals
MIB = 2**20
# Pillow holds a greyscale image at 1 byte a pixel and an RGB one at 4 (RGB padded to RGBX).
STORED_BYTES_PER_PIXEL = {"L": 1, "RGB": 4}
# Beside the one full-size copy: the reduced copy, the 96 px output and its JPEG, the file's bytes, allocator slack.
MARGIN = 64 * MIB

# How a child reports: its peak resident memory (VmHWM) before and after the work, and what the work returned.
VMHWM = """
import json, re, sys
from pathlib import Path

def peak() -> int:
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
"""
PEAK = VMHWM + """
{imports}
path = Path(sys.argv[1])
baseline = peak()
result = {call}
print(json.dumps({{"baseline": baseline, "peak": peak(), "result": result}}))
"""
# Each stage's own decode of one file, and a JSON value saying it decoded the image rather than refused it.
DECODERS = {
    "fetch hash": ("from skincancer.ingest.near_duplicates import image_hash",
                   "image_hash(path.read_bytes())"),
    "shard": ("from skincancer.core.params import ShardParams\nfrom skincancer.shard.prepare import EncodeJob, encode_file",
              "encode_file(EncodeJob(str(path), ShardParams().preparation())).height"),
    "predict": ("from skincancer.core.params import ShardParams\nfrom skincancer.evaluate.inference import prepare",
                "len(prepare(path, ShardParams().preparation()).jpeg)"),
}


@pytest.fixture(scope="session")
def flat_png(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A flat SIDE x SIDE PNG of a mode, made once a session: a few hundred KB on disk, hundreds of MB decoded."""
    folder = tmp_path_factory.mktemp("pixel_bombs")

    def made(mode: str) -> Path:
        path = folder / f"flat-{mode}.png"
        if not path.exists():
            Image.new(mode, (SIDE, SIDE)).save(path)
        return path

    return made


def _run_python(script: str, *args: object) -> dict:
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script, *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_pixel_bound_admits_the_test_image() -> None:
    assert SIDE * SIDE <= ShardParams().max_pixels < 2 * SIDE * SIDE


# predict prepares through the shard stage's own encode_file, so its RGB case (646 MiB before and after, as
# shard's) would only add a TensorFlow start.
@pytest.mark.parametrize(("stage", "mode"), [("fetch hash", "L"), ("fetch hash", "RGB"), ("shard", "L"),
                                             ("shard", "RGB"), ("predict", "L")])
def test_an_image_just_under_the_pixel_cap_costs_one_full_size_copy(flat_png, stage: str, mode: str) -> None:
    """Before, a greyscale one peaked at 805 MiB above the baseline in shard and predict and at 1452 MiB in
    the hash (copies made turning it upright and into RGB and YCbCr at full size), an RGB one at 1290 MiB in
    the hash."""
    imports, call = DECODERS[stage]
    run = _run_python(PEAK.format(imports=imports, call=call), flat_png(mode))
    assert run["result"], run  # decoded, not refused
    one_copy = SIDE * SIDE * STORED_BYTES_PER_PIXEL[mode]
    used = run["peak"] - run["baseline"]
    assert used <= one_copy + MARGIN, f"{stage} peaked {used / MIB:.0f} MiB above its baseline"


CONCURRENT = VMHWM + """
from concurrent.futures import ThreadPoolExecutor
from skincancer.core import images
from skincancer.ingest.near_duplicates import image_hash

path, limit = Path(sys.argv[1]), int(sys.argv[2])
data = path.read_bytes()
images.DECODE_BUDGET.limit = limit
baseline = peak()
with ThreadPoolExecutor(8) as pool:  # as fetch's indexing hashes on a machine with 8 cores
    hashes = list(pool.map(image_hash, [data] * 8))
print(json.dumps({"baseline": baseline, "peak": peak(), "result": sorted(set(map(str, hashes)))}))
"""


def test_eight_concurrent_hashes_decode_no_more_at_once_than_the_budget_holds(tmp_path: Path) -> None:
    """The budget scaled down with the images (so the test is fast): room for two 6000x6000 greyscale
    decodes at once. Eight at once would peak at 8 copies, as they did before (277 MiB); freed copies kept in
    each thread's malloc arena would add up to nearly as much (210 MiB)."""
    side = 6000
    one_copy = side * side
    path = tmp_path / "flat.png"
    Image.new("L", (side, side)).save(path)
    run = _run_python(CONCURRENT, path, int(2.5 * one_copy))
    assert run["result"] == [image_hash(path.read_bytes())]
    used = run["peak"] - run["baseline"]
    assert used <= 2 * one_copy + 16 * MIB, f"8 hashes peaked {used / MIB:.0f} MiB: more than 2 decodes at once"


def _reserving(budget: DecodeBudget, size: int, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def hold() -> None:
        with budget.reserve(size):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_a_decode_waits_until_its_bytes_fit_beside_those_in_flight() -> None:
    budget = DecodeBudget(100)
    first, first_leaves = threading.Event(), threading.Event()
    _reserving(budget, 60, first, first_leaves)
    assert first.wait(5)
    beside, too_big = threading.Event(), threading.Event()
    both_leave = threading.Event()
    _reserving(budget, 40, beside, both_leave)
    assert beside.wait(5)  # 60 + 40 fit in 100
    waiter = _reserving(budget, 70, too_big, both_leave)
    assert not too_big.wait(0.3)  # 100 + 70 do not
    first_leaves.set()
    assert not too_big.wait(0.3)  # 40 + 70 still do not
    both_leave.set()
    assert too_big.wait(5)
    waiter.join(5)


def test_an_image_larger_than_the_whole_budget_still_decodes_alone() -> None:
    budget = DecodeBudget(100)
    small, small_leaves = threading.Event(), threading.Event()
    _reserving(budget, 10, small, small_leaves)
    assert small.wait(5)
    huge, huge_leaves = threading.Event(), threading.Event()
    _reserving(budget, 1000, huge, huge_leaves)
    assert not huge.wait(0.3)  # not beside another decode
    small_leaves.set()
    assert huge.wait(5)  # but alone, although it is over the limit
    huge_leaves.set()


def test_an_image_over_max_pixels_gets_no_hash_and_is_not_decoded(tmp_path: Path) -> None:
    """fetch's hash applies shard.max_pixels as the shard stage does: an image shard will skip gets no hash."""
    write_sample(tmp_path / "sample", n_images=8, seed=1)
    folder = tmp_path / "sample" / "isic2020"
    unbounded = read_layout("isic2020", folder, source="sample", raw_root=tmp_path)
    pixels = unbounded["width"] * unbounded["height"]
    bound = int(pixels.median())
    bounded = read_layout("isic2020", folder, source="sample", raw_root=tmp_path, max_pixels=bound)
    kept = (pixels <= bound).to_numpy()
    assert 0 < kept.sum() < len(kept)
    assert bounded["image_hash"][kept].tolist() == unbounded["image_hash"][kept].tolist()
    assert bounded["image_hash"][~kept].isna().all() and unbounded["image_hash"].notna().all()
    assert bounded["width"].tolist() == unbounded["width"].tolist()  # the size is still read from the header
