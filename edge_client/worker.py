"""The training worker: ``python -m edge_client.worker``.

Reads frames from stdin and answers on the original stdout (see
:mod:`edge_client.trainer`). File descriptor 1 is pointed at stderr first, so
a runtime that prints to stdout cannot corrupt the protocol. Any error is
answered as ``{"ok": false}``; a native crash simply ends the process, which
the agent sees as a signal.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

from edge_client.errors import DataError
from edge_client.session import (
    _BLOB,
    _HEAD,
    LocalSession,
    encode_frame,
    job_from_header,
    local_runtime,
)
from edge_client.storage import arrays_to_bytes
from fedge.errors import FedgeError


def _read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    (head_len,) = _HEAD.unpack(head)
    header = json.loads(stream.read(head_len))
    (blob_len,) = _BLOB.unpack(stream.read(_BLOB.size))
    blob = stream.read(blob_len) if blob_len else b""
    return header, blob


def main() -> int:
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer

    def reply(header: dict[str, Any], blob: bytes = b"") -> None:
        protocol_out.write(encode_frame(header, blob))

    session: LocalSession | None = None
    while True:
        frame = _read_frame(stdin)
        if frame is None:
            return 0
        header, blob = frame
        cmd = header.get("cmd")
        try:
            if cmd == "probe":
                reply({"ok": True, "runtime": local_runtime(header.get("runtime"))})
            elif cmd == "start":
                session = LocalSession(job_from_header(header, blob))
                reply({"ok": True, "runtime": session.runtime, "data_bytes": session.data_bytes})
            elif cmd == "step":
                if session is None:
                    raise FedgeError("step before start")
                result = session.step()
                if result is None:
                    reply({"ok": True, "done": True})
                else:
                    reply({"ok": True, "examples": result.examples, "loss": result.loss})
            elif cmd == "finish":
                if session is None:
                    raise FedgeError("finish before start")
                reply({"ok": True}, arrays_to_bytes(session.weights()))
            elif cmd == "stop":
                return 0
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except DataError as exc:
            reply({"ok": False, "kind": "data", "error": str(exc)})
        except FedgeError as exc:
            reply({"ok": False, "kind": "model", "error": str(exc)})
        except Exception as exc:  # answer, then let the agent decide; never hang the pipe
            reply({"ok": False, "kind": "bug", "error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    sys.exit(main())
