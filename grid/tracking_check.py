"""Whether a grid's MLflow tracking store can be used, answered in seconds (MLflow itself retries for minutes)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

# An MLflow server answers /health at once; a host that drops packets is given this long.
TIMEOUT_S = 3.0
FIX = (
    "point output.tracking_uri at a running MLflow server (`just mlflow` starts one) or at a sqlite:/// file"
)


class TrackingStoreError(ValueError):
    """A tracking store that cannot be reached or used; the message names the setting and the fix."""


def setting_name(spec_value: str | None) -> str:
    """Where the URI came from, as the user wrote it."""
    if spec_value:
        return "output.tracking_uri"
    return "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store ./mlflow"


def store_problem(uri: str, setting: str = "output.tracking_uri") -> str | None:
    """None when the store at `uri` can be used, else one sentence naming `setting`, the URI and the fix."""
    if uri.startswith(("http://", "https://")):
        return _server_problem(uri, setting)
    if uri.startswith("sqlite:///"):
        return _sqlite_problem(Path(uri.removeprefix("sqlite:///")), uri, setting)
    if uri.startswith("file:") or "://" not in uri:
        return (
            f"{setting}={uri}: a plain path is MLflow's file store, which MLflow no longer develops (maintenance"
            f" mode) and seagrid does not use; write sqlite:///{Path(uri.removeprefix('file:')).expanduser()}"
            "/mlflow.db instead"
        )
    return None  # another backend MLflow knows (postgresql://, databricks, ...): MLflow reports its errors


def _server_problem(uri: str, setting: str) -> str | None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # something answers: a server behind a proxy may not serve /health
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = getattr(err, "reason", err)
        return f"{setting}={uri}: no MLflow server answers ({why}); {FIX}"


def _sqlite_problem(db: Path, uri: str, setting: str) -> str | None:
    if db.is_dir():
        return f"{setting}={uri}: {db} is a directory; name the database file, e.g. {db}/mlflow.db"
    folder = db.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{setting}={uri}: {existing} is a file, so the store's folder {folder} cannot be made; {FIX}"
    target = db if db.exists() else existing
    if target is not None and not os.access(target, os.W_OK):
        return f"{setting}={uri}: {target} is not writable; {FIX}"
    return None


def check_store(uri: str, setting: str = "output.tracking_uri") -> None:
    """Raise TrackingStoreError when the store cannot be used."""
    problem = store_problem(uri, setting)
    if problem:
        raise TrackingStoreError(problem)
