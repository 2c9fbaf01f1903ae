"""Commands reach the running kit through a Unix socket in the data dir (owner-only).

One JSON request per connection: {"op": ..., "args": {...}}. The kit answers with JSON
lines: any number of {"progress": {...}}, then {"ok": true, "result": ...} or
{"ok": false, "error": "...", "exit_code": n}. When no kit runs, `run_op` opens the store
itself and runs the very same operation, so the user types the same command either way.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable

from ..errors import FieldkitError, StoreBusy
from ..store import dir_is_locked
from .core import open_kit
from .registry import CONTROL_OPS, resolve

log = logging.getLogger(__name__)
MAX_REQUEST = 1 << 20
SOCKET_FILE = "kit.sock"


class ControlServer:
    def __init__(self, kit, path: Path, ops: dict[str, str] = CONTROL_OPS):
        self.kit, self.path, self.ops = kit, Path(path), ops
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            def emit(progress: dict) -> None:
                f.write(json.dumps({"progress": progress}).encode() + b"\n")
                f.flush()

            try:
                line = f.readline(MAX_REQUEST)
                request = json.loads(line)
                op = request["op"]
                if op not in self.ops:
                    raise FieldkitError(f"the running kit does not know the operation {op!r}")
                result = resolve(self.ops[op])(self.kit, request.get("args") or {}, emit)
                reply = {"ok": True, "result": result}
            except FieldkitError as exc:
                reply = {"ok": False, "error": exc.message, "exit_code": exc.exit_code}
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"bad control request: {exc.__class__.__name__}", "exit_code": 2}
            except Exception:
                log.exception("control operation failed")
                reply = {"ok": False, "error": "internal error in the running kit (see its log)", "exit_code": 1}
            try:
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()
            except OSError:
                pass

    def stop(self) -> None:
        self._stopping = True
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)


def call(data_dir: Path, op: str, args: dict, on_progress: Callable[[dict], None] | None = None,
         timeout: float = 3600.0):
    """Ask the running kit to perform `op`; raises FieldkitError with its message."""
    path = Path(data_dir) / SOCKET_FILE
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise StoreBusy(f"a fieldkit process holds {data_dir} but its control socket does not answer; "
                        "is it still starting?") from None
    with sock, sock.makefile("rwb") as f:
        f.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        f.flush()
        for line in f:
            msg = json.loads(line)
            if "progress" in msg:
                if on_progress:
                    on_progress(msg["progress"])
                continue
            if msg.get("ok"):
                return msg["result"]
            err = FieldkitError(msg.get("error", "the running kit refused"))
            err.exit_code = msg.get("exit_code", 1)
            raise err
    raise FieldkitError("the running kit closed the connection without an answer")


def run_op(data_dir: Path, op: str, args: dict, on_progress: Callable[[dict], None] | None = None,
           passphrase: str | None = None):
    """Run `op` through the running kit, or locally when none runs."""
    if dir_is_locked(data_dir):
        return call(data_dir, op, args, on_progress)
    kit = open_kit(data_dir, passphrase=passphrase)
    try:
        return resolve(CONTROL_OPS[op])(kit, args, on_progress or (lambda p: None))
    finally:
        kit.close()
