"""Ray's and Tune's own output (start-up, worker logs, raylet warnings, Tune's boxes) into a log file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from grid.redact import scrub, secret_values


class ScrubbedLog(io.TextIOBase):
    """A text stream into the log file: line-buffered, thread-safe, secret values masked."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._secrets = secret_values()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if not self._file.closed:
                self._file.write(scrub(text, self._secrets))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        with self._lock:
            self._file.close()
        super().close()


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block (a value the user set already is kept)."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, was in old.items():
            if was is None:
                os.environ.pop(k, None)


def _ray_stream_handlers() -> list[logging.StreamHandler]:
    names = ["ray", *(n for n in logging.Logger.manager.loggerDict if n.startswith("ray."))]
    return [
        h
        for name in names
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def _set_stream(handler: logging.StreamHandler, stream: Any) -> Any:
    """`handler.setStream(stream)`, also when its old stream is closed already (setStream flushes it):
    a handler made while an earlier stream stood in for stderr (an earlier grid's log, a test's capture)."""
    try:
        return handler.setStream(stream)
    except ValueError:
        handler.stream = stream
        return None


@contextlib.contextmanager
def _ray_loggers_to(stream: TextIO | io.TextIOBase) -> Iterator[None]:
    """Ray's loggers write to the stream they were given when Ray was imported (the terminal): point
    their stream handlers at `stream` for the block. Handlers Ray makes inside the block take the
    redirected stderr, i.e. `stream`: afterwards they go back to the real stderr, not a closed log."""
    swapped = [(h, _set_stream(h, stream)) for h in _ray_stream_handlers()]
    try:
        yield
    finally:
        for handler, old in swapped:
            if old is not None:
                _set_stream(handler, old)
        for handler in _ray_stream_handlers():
            if handler.stream is stream:
                _set_stream(handler, sys.__stderr__)


# Where the workers' log lines go that Ray forwards to this process (None: Ray's own printing, the terminal).
_worker_log: Path | None = None
_worker_log_lock = threading.Lock()


def _print_worker_lines(data: dict[str, Any]) -> None:
    """Ray's handler for forwarded worker output, pointed at the current log file. Lines keep arriving
    after a Tune run returns (a worker's last prints): they go to that run's log, not the terminal."""
    from ray._private import worker

    path = _worker_log
    if path is None:
        worker.print_to_stdstream(data, ignore_prefix=False)
        return
    buf = io.StringIO()
    worker.print_worker_logs(data, buf)
    with _worker_log_lock, open(path, "a", encoding="utf-8") as f:
        f.write(scrub(buf.getvalue()))


def _route_worker_lines() -> None:
    """Replace Ray's printer of forwarded worker output (registered by ray.init) by _print_worker_lines."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without this internal: its own printing stays (and the redirect below)
        return
    names = [name for name, _ in dispatcher.handlers]
    if "ray_print_logs" in names:
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", _print_worker_lines)


def _flush_held_lines(stream: io.TextIOBase) -> None:
    """Worker lines Ray's printer held back to count repeats ("[repeated 7x across cluster]") go to the log
    now: Ray would print them to the real stdout when it shuts down, after the grid's summary."""
    try:
        from ray._private import worker
        from ray._private.ray_logging import stderr_deduplicator, stdout_deduplicator
    except ImportError:  # a Ray without these internals: it prints its leftovers itself
        return
    for held in (stdout_deduplicator, stderr_deduplicator):
        for batch in held.flush():
            worker.print_worker_logs(batch, stream)


@contextlib.contextmanager
def ray_output(log_path: Path, verbose: bool) -> Iterator[Path | None]:
    """Ray's and Tune's own output (start-up lines, raylet warnings, Tune's boxes, the workers' logs)
    goes to `log_path` for the block, not the terminal; with `verbose` it stays on the terminal.

    How: the workers' logs are forwarded to the driver (SEAGRID_RAY_LOGS=1 -> ray.init(log_to_driver=True))
    and written to the log by _print_worker_lines, also those arriving after the block; whatever else
    Ray prints in this process (raylet warnings and Tune's boxes to sys.stdout, its loggers through
    their stream handlers) lands in the log while sys.stdout / sys.stderr and those handlers point at
    it. The command's own console keeps the real stdout it was made with.
    """
    global _worker_log
    with _env({"SEAGRID_RAY_LOGS": "1"}):
        _worker_log = None if verbose else log_path
        if verbose:
            yield None
            return
        log = ScrubbedLog(log_path)
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} seagrid: Ray's and Tune's output\n")
        _route_worker_lines()  # Ray already up (a second grid in this process)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), _ray_loggers_to(log):
                yield log_path
        finally:
            _route_worker_lines()  # Ray started in the block: its workers' late lines still reach the log
            _flush_held_lines(log)
            log.close()
