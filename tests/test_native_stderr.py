"""TensorFlow's C++ banners are dropped from a stage's or the CLI's stderr; everything else gets through."""

import os
import subprocess
import sys
from pathlib import Path

from project_copy import ROOT

SCRIPT = """
import os, sys
from skincancer.ops.native_stderr import filter_native_stderr
filter_native_stderr()
import tensorflow as tf
tf.config.list_physical_devices("GPU")
os.write(2, b"E0000 00:00:1.0 1 real_error.cc:1] a real native error\\n")
print("python says hello", file=sys.stderr)
sys.stderr.write("progress 50%\\r")
sys.stderr.flush()
raise SystemExit("the last words")
"""


def test_native_banners_are_dropped_and_everything_else_kept():
    # TensorFlow turns oneDNN on (and says so) by default only on some Intel CPUs: asked, it says so on any x86
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    without, with_filter = (subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, cwd=ROOT, env=env)
                            for script in (SCRIPT.replace("filter_native_stderr()\n", "", 1), SCRIPT))  # side by side
    raw, filtered = without.communicate()[1], with_filter.communicate()[1]
    assert b"oneDNN custom operations are on" in raw  # what TensorFlow prints here without the filter
    for banner in (b"oneDNN custom operations", b"absl::InitializeLog", b"Could not find cuda drivers", b"cuInit"):
        assert banner not in filtered, filtered
    for kept in (b"a real native error", b"python says hello", b"progress 50%\r", b"the last words"):
        assert kept in filtered, filtered


def test_the_cli_prints_no_banner(tmp_path):
    out = subprocess.run([str(Path(sys.executable).with_name("skincancer")), "predict", str(tmp_path / "none.jpg"), "--threshold", "0.5",
                          "--model", str(tmp_path / "missing.keras")], capture_output=True, cwd=tmp_path)
    assert out.returncode == 2 and b"missing.keras" in out.stderr
    assert b"oneDNN" not in out.stderr and b"absl" not in out.stderr
