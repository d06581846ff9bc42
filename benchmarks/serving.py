"""Serving: how far the SavedModel's in-graph bytes signature lands from `skincancer predict` on the demo's
test images, and how fast the CLI refuses a bad choice. Absolute figures against their targets: there
is no second way of doing the same work to compare with.

serving_bytes_vs_predict_max  max |score difference| over every test image of the project's model
                              (models/model.keras and its card; run `make demo` first). Target <= 0.02.
cli_refuses_a_bad_format      best of 3 wall times of `skincancer export --format onnx`. Target < 1 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BIN, ROOT, bench_tmp, parse_args, print_figures, say, say_machine, target_figure

MODEL, CARD, TEST_IMAGES = ROOT / "models/model.keras", ROOT / "models/card.json", ROOT / "data/split/test"
SERVE_BYTES = (
    "import json, sys, tensorflow as tf\n"
    "loaded = tf.saved_model.load(sys.argv[1])\n"
    "files = [open(path, 'rb').read() for path in sys.argv[2:]]\n"
    "print(json.dumps(loaded.signatures['serve_bytes'](image_bytes=tf.constant(files))['output_0'].numpy().tolist()))\n"
)


def bytes_gap(tmp: Path) -> dict:
    from skincancer.core.model_card import read_card
    from skincancer.evaluate.inference import load_for_inference
    from skincancer.serve.predict import image_files, predict

    exported = tmp / "savedmodel"
    subprocess.run([str(BIN / "skincancer"), "export", "--model", str(MODEL), "--output", str(exported)], check=True,
                   capture_output=True)
    files = image_files([TEST_IMAGES])
    ours = predict(files, load_for_inference(MODEL), read_card(CARD, MODEL), progress=False)["score"].to_numpy()
    served = subprocess.run([str(BIN / "python"), "-c", SERVE_BYTES, str(exported), *map(str, files)], check=True,
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    scores = json.loads(served.stdout.strip().splitlines()[-1])
    gaps = [abs(a - b) for a, b in zip(scores, ours, strict=True)]
    say(f"{len(files)} test images: max |delta score| {max(gaps):.5f}, mean {sum(gaps) / len(gaps):.5f}")
    return target_figure("serving_bytes_vs_predict_max", round(max(gaps), 5), 0.02, "score", images=len(files),
                         mean=round(sum(gaps) / len(gaps), 5))


def refusal_time() -> dict:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([str(BIN / "skincancer"), "export", "--format", "onnx"], capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        assert result.returncode == 2 and "'onnx'" in result.stderr, result.stderr
    return target_figure("cli_refuses_a_bad_format", round(min(times), 3), 1.0, "s", passes=[round(t, 3) for t in times])


def main() -> int:
    args = parse_args(__doc__.splitlines()[0])
    say_machine()
    figures = [refusal_time()]
    if MODEL.is_file() and CARD.is_file() and TEST_IMAGES.is_dir():
        with bench_tmp("serving", keep=args.keep) as tmp:
            figures.append(bytes_gap(tmp))
    else:
        say(f"{MODEL} with its card and {TEST_IMAGES} not found: run `make demo` for the bytes figure")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
