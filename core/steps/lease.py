"""A lock file with a heartbeat lease: exclusive create, no `flock` (works on Lustre and NFS mounts).

The holder's thread touches the file every `lease_s / 4` seconds; a lock whose file has not been touched
for `lease_s`, or whose holder is a process of this machine that no longer runs, belongs to a dead holder
and may be broken. Breaking renames the file away first (atomic:
of two breakers, one wins) and checks that what it moved is the stale lock it judged, so a live lock
taken in between is put back rather than stolen.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_LEASE_S = 120.0


def _holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def this_machine() -> str:
    """Host name and kernel boot id: equal only for processes that see the same process table (a
    container on the same kernel has its own host name)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's record with `age_s` (seconds since its last heartbeat), or None when unlocked."""
    try:
        stat = path.stat()
        record = json.loads(path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError):
        # A lock being written or removed right now: the caller polls again.
        return None if not path.exists() else {"holder": "?", "age_s": 0.0, "lease_s": DEFAULT_LEASE_S}
    record["age_s"] = max(0.0, time.time() - stat.st_mtime)
    return record


def is_stale(record: dict[str, Any]) -> bool:
    """Whether a lock's holder missed its heartbeats for a whole lease, or is a process of this machine
    that is gone (a rerun after a SIGKILL takes over at once instead of waiting out the lease)."""
    if record["age_s"] > float(record.get("lease_s", DEFAULT_LEASE_S)):
        return True
    pid = record.get("pid")
    return record.get("machine") == this_machine() and isinstance(pid, int) and not pid_alive(pid)


class Lease:
    """An exclusive lock on `path`; `acquire()` once, `release()` once (or use it as a context manager)."""

    def __init__(self, path: Path, lease_s: float = DEFAULT_LEASE_S, info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.lease_s = float(lease_s)
        self.holder = _holder_id()
        self.info = dict(info or {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (or its holder is dead); False when a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "holder": self.holder,
            "machine": this_machine(),
            "pid": os.getpid(),
            "lease_s": self.lease_s,
            "since": time.time(),
            **self.info,
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current = read_lock(self.path)
            if current is not None and is_stale(current):
                self._break(current)
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        self._start_heartbeat()
        return True

    def acquire(self, poll_s: float = 1.0, on_wait: Any = None) -> None:
        """Wait until the lock is ours; `on_wait(record)` is called at each poll while another holds it."""
        while not self.try_acquire():
            if on_wait is not None:
                on_wait(read_lock(self.path))
            time.sleep(poll_s)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lock(self.path)
        if current is not None and current.get("holder") == self.holder:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.lease_s / 4):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        self._thread = threading.Thread(target=beat, name=f"lease:{self.path.name}", daemon=True)
        self._thread.start()

    def _break(self, judged: dict[str, Any]) -> None:
        """Move a dead holder's lock away; put it back if what moved is not the lock judged stale."""
        aside = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_lock(aside)
        if moved is not None and moved.get("holder") != judged.get("holder") and not is_stale(moved):
            # Fails if a third process took the lock meanwhile: then that one holds it, as it should.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)
