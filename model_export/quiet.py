"""Silence TensorFlow's and CUDA's start-up noise on stderr during an export.

Importing TensorFlow prints about ten lines to file descriptor 2 from C++
before any Python logging is configured (absl's "All log messages before
absl::InitializeLog()", oneDNN's notice, "CUDA error: Failed call to cuInit"
…), and the converter adds its own. ``TF_CPP_MIN_LOG_LEVEL`` does not cover
all of them, so the export redirects file descriptor 2 to a temporary file
while it runs; ``fedge export --verbose`` lets everything through. If the
export fails with an error fedge did not expect, the captured text is
printed so nothing that explains it is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

from fedge.errors import FedgeError

NOISE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """Within the block, stderr (fd 2, and so Python's sys.stderr) goes to a scratch file.

    The scratch text is replayed on stderr if the block raises anything but
    a fedge error (whose one-line message the command prints itself)."""
    if not enabled:
        yield
        return
    for key, value in NOISE_ENV.items():
        os.environ.setdefault(key, value)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        except FedgeError:
            raise
        except BaseException:
            _restore(saved)
            scratch.seek(0)
            os.write(2, scratch.read()[-20000:])
            raise
        finally:
            _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
