"""Serve an MLflow store on 127.0.0.1, open a grid's experiment page in headless Chromium, save a screenshot.

A check in a real browser of what a researcher sees (not a test; needs the Debian package `chromium`):

    uv run python bench/ui_screenshot.py --experiment smoke --out /tmp/smoke.png
    uv run python bench/ui_screenshot.py --tracking-uri sqlite:////tmp/x/mlflow.db --experiment uidemo

It prints which of the experiment's run names the rendered page contains.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from grid.tracking import default_tracking_uri, experiment_url  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def serve(tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 (one worker, no job runner: it starts in ~15 s on 2 cores)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = open(log, "w")  # noqa: SIM115 (the server's whole life)
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 180) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {limit_s} s:\n{log.read_text()[-3000:]}")


def chromium(url: str, out: Path, width: int, height: int, wait_ms: int) -> str:
    """Screenshot of `url` into `out`; returns the rendered DOM (a second load, for the text check)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise SystemExit("no chromium on PATH: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="seagrid-chromium-") as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        base += [f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        base += [f"--virtual-time-budget={wait_ms}"]
        subprocess.run([*base, f"--screenshot={out}", url], check=True, capture_output=True, timeout=180)
        dom = subprocess.run([*base, "--dump-dom", url], check=True, capture_output=True, timeout=180)
    return dom.stdout.decode(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tracking-uri", help="store to serve (default: the local store, as seagrid uses it)"
    )
    parser.add_argument("--experiment", required=True, help="experiment (grid) name")
    parser.add_argument("--out", default="mlflow_ui.png", help="screenshot path (PNG)")
    parser.add_argument("--size", default="1600x1000", help="browser window, WIDTHxHEIGHT")
    parser.add_argument(
        "--view",
        choices=("ml", "default"),
        default="ml",
        help="ml: the link seagrid prints (the UI's 'Model training' view); default: the bare experiment URL",
    )
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = parser.parse_args()
    uri = args.tracking_uri or default_tracking_uri()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="seagrid-ui-")) / "server.log"
    proc = serve(uri, port, log)
    try:
        print(f"mlflow server healthy after {wait_healthy(url, proc, log):.1f} s at {url}")
        exp = get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={args.experiment}")
        exp_id = exp["experiment"]["experiment_id"]
        tags = {t["key"]: t["value"] for t in exp["experiment"].get("tags", [])}
        runs = get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        names = [r["info"]["run_name"] for r in runs]
        page = experiment_url(url, exp_id, args.view)
        width, height = (int(v) for v in args.size.split("x"))
        t0 = time.monotonic()
        dom = chromium(page, Path(args.out), width, height, args.wait_ms)
        print(f"screenshot of {page} -> {args.out} ({time.monotonic() - t0:.1f} s)")
        print(
            f"experiment {args.experiment} (id {exp_id}), mlflow.experimentKind={tags.get('mlflow.experimentKind')}"
        )
        for r, name in zip(runs, names, strict=True):
            shown = "on the page" if name in dom else "NOT on the page"
            print(f"  run {name!r} ({r['info']['status']}): {shown}")
        return 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
