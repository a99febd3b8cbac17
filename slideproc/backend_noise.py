"""Import Keras (and its TensorFlow backend) without TensorFlow's start-up noise in the log.

Importing TensorFlow writes, from C++ straight to file descriptor 2, lines
such as "WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR" and "I0000 ... oneDNN custom operations are on", twice.
``TF_CPP_MIN_LOG_LEVEL`` silences TensorFlow's later INFO lines but not
these, which are printed before its logging is set up. In a redirected
training log they are noise, so :func:`import_keras` captures descriptor 2
during the import and passes on every line except those known ones.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# Lines TensorFlow prints at import that say nothing about the user's run.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:. ]+\s+\d+ (port|cpu_feature_guard|cuda_\w+|gpu_device)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


def import_keras() -> None:
    """Import keras with TensorFlow's INFO logs off (unless the user set
    TF_CPP_MIN_LOG_LEVEL) and its import-time noise filtered from stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded interpreters)
        import keras  # noqa: F401

        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import keras  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
