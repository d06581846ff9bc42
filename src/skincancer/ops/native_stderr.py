"""TensorFlow's C++ runtime writes banners to the process's stderr (file descriptor 2) before its own
log settings apply: oneDNN, the CUDA stubs, cuInit, CPU features. TF_CPP_MIN_LOG_LEVEL cannot hide
them. Stage processes and the CLI pass descriptor 2 through a filter that drops exactly those lines
and forwards everything else as it comes, partial lines (progress bars) included."""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

BANNER = re.compile(
    rb"oneDNN custom operations are on|Could not find cuda drivers|failed call to cuInit|"
    rb"All log messages before absl::InitializeLog|This TensorFlow binary is optimized|"
    rb"To enable the following instructions|rebuild TensorFlow with the appropriate compiler flags|"
    rb"oneDNN supports DT_UINT8 only|Unable to register cu(DNN|FFT|BLAS) factory|"
    rb"computation placer already registered|TF-TRT Warning"
)
# how a banner line starts: absl's "I0000 00:00:..." prefix, or one of TensorFlow's plain lines
PLAIN_STARTS = (b"WARNING: All log", b"To enable the", b"This TensorFlow")
ABSL_START = re.compile(rb"[IWE]\d{0,4}( .*)?", re.DOTALL)


def _may_be_banner(partial: bytes) -> bool:
    """A line not yet ended that could still turn out to be a banner (a progress bar's \\r never is)."""
    if b"\r" in partial:
        return False
    return bool(ABSL_START.fullmatch(partial)) or any(s.startswith(partial) or partial.startswith(s) for s in PLAIN_STARTS)


_installed = False


def filter_native_stderr() -> None:
    """From now on, descriptor 2 goes through the banner filter (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    pump = threading.Thread(target=_pump, args=(read, real), name="native-stderr-filter", daemon=True)
    pump.start()
    atexit.register(_restore, pump, real)


def _pump(read: int, real: int) -> None:
    pending = b""
    while chunk := os.read(read, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not BANNER.search(line):
                os.write(real, line + b"\n")
        if pending and not _may_be_banner(pending):  # e.g. a progress bar's \r update: show it now
            os.write(real, pending)
            pending = b""
    if pending and not BANNER.search(pending):
        os.write(real, pending)
    os.close(read)


def _restore(pump: threading.Thread, real: int) -> None:
    """At exit: the real stderr back on descriptor 2, and whatever the filter still holds written out."""
    sys.stderr.flush()
    os.dup2(real, 2)  # the pipe's last write end in this process closes: the pump reads to its end
    pump.join(timeout=2)
