"""What a grid command shows: one live table of its trials, plain lines when stdout is not a terminal."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from core.config.methods import SPEED, TOTAL_LOSS, stage_metric

# Off a terminal, a running trial prints a progress line at most this often (and at each stage's end).
PLAIN_EVERY_S = 10.0
STATUS_STYLE = {
    "queued": "dim",
    "running": "yellow",
    "done": "green",
    "done earlier": "green",
    "failed": "red",
    "killed": "red",
}


@dataclass
class TrialLine:
    """One trial's row: what it is and how far it got."""

    tid: str
    name: str
    status: str = "queued"
    stage: str = ""
    step: int = 0
    total: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    started: float | None = None
    ended: float | None = None
    stage_t0: float | None = None  # time and step of the first progress seen in this stage (for the ETA)
    stage_s0: int = 0
    note: str = ""

    def eta(self, now: float) -> float | None:
        """Seconds left in the current stage at the rate seen since its first report."""
        if self.total is None or self.stage_t0 is None or self.step <= self.stage_s0:
            return None
        rate = (self.step - self.stage_s0) / max(now - self.stage_t0, 1e-9)
        return (self.total - self.step) / rate


def duration(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '2 h 04 min'."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Board:
    """The trials of one command: a rich Live table updated in place on a terminal, plain lines elsewhere
    (tests, CI, pipes). Thread-safe: Ray Tune's callbacks and the Live refresh run in different threads."""

    def __init__(
        self, title: str, console: Console, live: bool | None = None, show_prints: bool = False
    ) -> None:
        """`live`: a Live table (default: when the console is a terminal); `show_prints`: what else prints
        to sys.stdout / sys.stderr meanwhile (Ray with --verbose) appears above the table."""
        self.title, self.console, self.show_prints = title, console, show_prints
        self.live = console.is_terminal and not console.is_dumb_terminal if live is None else live
        self.lines: dict[str, TrialLine] = {}
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._last_plain: dict[str, float] = {}
        self.t0 = time.time()

    # --- the trials -------------------------------------------------------------------------------------

    def add(self, tid: str, name: str, status: str = "queued") -> None:
        with self._lock:
            self.lines[tid] = TrialLine(tid, name, status)

    def start(self, tid: str) -> None:
        with self._lock:
            line = self.lines[tid]
            # Until its first report a trial is starting: Ray Train's workers, data, models, SEA labels.
            line.status, line.started, line.stage = "running", time.time(), "starting"
        self._plain(f"start   {line.name}  ({tid})")

    def phase(self, tid: str, text: str) -> None:
        """What a trial is doing while it has no step to show (`stage1: starting workers, ...`): in the
        stage column until its next progress report, and as a plain line."""
        with self._lock:
            line = self.lines[tid]
            line.stage, line.step, line.total, line.stage_t0 = text, 0, None, None
        self._plain(f"        {line.name}  {text}")
        self.refresh()

    def progress(self, tid: str, stage: str, step: int, total: int | None, metrics: dict[str, Any]) -> None:
        """A report from a trial: its stage, step of total and the metrics logged at that step."""
        now = time.time()
        with self._lock:
            line = self.lines[tid]
            if stage != line.stage:
                line.stage, line.stage_t0, line.stage_s0 = stage, now, step
            line.step, line.total = step, total if total is not None else line.total
            loss, speed = (
                metrics.get(stage_metric(stage, TOTAL_LOSS)),
                metrics.get(stage_metric(stage, SPEED)),
            )
            line.loss = loss if loss is not None else line.loss
            line.samples_per_s = speed if speed is not None else line.samples_per_s
            due = now - self._last_plain.get(tid, 0.0) >= PLAIN_EVERY_S or step == total
            if due:
                self._last_plain[tid] = now
        if due and loss is not None:
            self._plain(f"        {line.name}  {self._progress_text(line, now)}")
        self.refresh()

    def finish(self, tid: str, status: str = "done", note: str = "") -> None:
        with self._lock:
            line = self.lines[tid]
            line.status, line.ended, line.note = status, time.time(), note
        took = duration(line.ended - line.started) if line.started else ""
        text = f"{status:<7} {line.name}  ({tid})  {took}"
        self._plain(text + (f"\n        {note}" if note else ""), STATUS_STYLE.get(status))
        self.refresh()

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [ln.status for ln in self.lines.values()]
        return {s: statuses.count(s) for s in dict.fromkeys(statuses)}

    # --- output ------------------------------------------------------------------------------------------

    def __enter__(self) -> Board:
        if self.live:
            # Without show_prints, sys.stdout stays wherever ray_output pointed it (the log file).
            self._live = Live(
                console=self.console,
                refresh_per_second=2,
                transient=True,
                get_renderable=self.table,
                redirect_stdout=self.show_prints,
                redirect_stderr=self.show_prints,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def message(self, text: str) -> None:
        """A line above the table (or a plain line)."""
        self.console.print(text, highlight=False, soft_wrap=True)

    def _plain(self, text: str, style: str | None = None) -> None:
        if not self.live:
            self.console.print(
                Text(f"{time.strftime('%H:%M:%S')}  {text}", style=style or ""), soft_wrap=True
            )

    @staticmethod
    def _progress_text(line: TrialLine, now: float) -> str:
        parts = [f"{line.stage} {line.step}/{line.total or '?'}"]
        if line.loss is not None:
            parts.append(f"loss {line.loss:.4g}")
        if line.samples_per_s is not None:
            parts.append(f"{line.samples_per_s:.3g} samples/s")
        eta = line.eta(now)
        if eta is not None and line.step != line.total:
            parts.append(f"ETA {duration(eta)}")
        return "  ".join(parts)

    def table(self) -> Table:
        """The table as it stands: trial (never wrapped), axis values, stage, step, loss, speed, ETA/time."""
        now = time.time()
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        table = Table(title=f"{self.title}  ({counts}; {duration(now - self.t0)})", title_justify="left")
        with self._lock:
            lines = list(self.lines.values())
        # An id must stay copyable: never wrapped nor cut, the other columns give way.
        table.add_column("trial", no_wrap=True, min_width=max((len(ln.tid) for ln in lines), default=5))
        table.add_column("axes", overflow="fold")
        table.add_column("stage", no_wrap=True)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("loss", justify="right", no_wrap=True)
        table.add_column("samples/s", justify="right", no_wrap=True)
        table.add_column("ETA / time", justify="right", no_wrap=True)
        table.add_column("status", overflow="fold")
        for ln in lines:
            if ln.status == "running":
                when = duration(ln.eta(now))
            else:
                when = duration(ln.ended - ln.started) if ln.started and ln.ended else ""
            status = ln.status + (f": {ln.note}" if ln.note else "")
            table.add_row(
                ln.tid,
                ln.name,
                ln.stage,
                f"{ln.step}/{ln.total}" if ln.total else "",
                f"{ln.loss:.4g}" if ln.loss is not None else "",
                f"{ln.samples_per_s:.3g}" if ln.samples_per_s is not None else "",
                when,
                Text(status, style=STATUS_STYLE.get(ln.status, "")),
            )
        return table


def console_for(stream: TextIO | None = None) -> Console:
    """The command's console on `stream` (stdout): its own width on a terminal, a wide one off it, so that
    tables (ids) are never squeezed to 80 columns in a pipe or a CI log."""
    stream = stream or sys.stdout
    tty = stream.isatty()
    return Console(file=stream) if tty else Console(file=stream, width=220)
