"""Shared test set-up: offline hubs, one cache and one Ray session for the whole run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports transformers/huggingface_hub, so an accidental download fails at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("SEAGRID_CACHE", tempfile.mkdtemp(prefix="seagrid-test-cache-"))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def seagrid_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh, empty SEAGRID_CACHE for one test module (the session-wide one stays untouched)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("seagrid_cache")
        mp.setenv("SEAGRID_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session shared by the tests of a module (starting one costs ~10 s)."""
    import ray

    from core.ray_session import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray


@pytest.fixture(scope="module", autouse=True)
def _fresh_ray_per_module():
    """Each module that uses Ray (directly or through the grid commands) gets a session of its own.

    Why: in full-suite runs the one session shared by every module (hundreds of Train and Tune actors over
    half an hour) twice stopped delivering actor state to the driver: the GCS held an ALIVE notice for a
    new trial actor that the driver never received, and the grid waited forever. A session per module
    bounds what one session sees and isolates a module's leftovers from the next.
    """
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True)
def own_process_group():
    """The MASTER_*/RANK variables a test's one-process group sets are gone afterwards, so that Ray workers and
    subprocesses (lmms-eval's Accelerator) started by later tests do not inherit a group whose port is still held
    (the group itself stays: DeepSpeed keeps handles to it). Autouse: CI's lmms test once failed on a leak."""
    from core.rendezvous import RENDEZVOUS

    before = {k: os.environ.get(k) for k in RENDEZVOUS}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_configure(config: pytest.Config) -> None:
    """Under `--fast` (just test-fast) a test that starts a Ray Train TorchTrainer without the `trainer` marker
    fails at once, so the fast tier cannot silently grow the tens of seconds each fit costs."""
    if config.getoption("--fast"):
        config.option.markexpr = " and ".join(
            part for part in (config.option.markexpr, "not trainer and not slow") if part
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help="the fast tier: no TorchTrainer, no slow tests")


@pytest.fixture(autouse=True)
def _trainer_marker_is_honest(request: pytest.FixtureRequest):
    """In the fast tier, starting a TorchTrainer is an error naming the marker to add."""
    if not request.config.getoption("--fast"):
        yield
        return
    from ray.train.torch import TorchTrainer

    def refuse(self, *args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a TorchTrainer: mark it @pytest.mark.trainer (or slow)"
        )

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchTrainer, "fit", refuse)
        yield
