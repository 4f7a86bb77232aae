"""grid.redact: secret-named settings and secret environment values never leave the process."""

from __future__ import annotations

import pytest

from grid.redact import MASK, is_secret_name, redact, redact_flat, scrub, secret_values


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "WANDB_API_KEY",
        "AWS_SECRET",
        "MLFLOW_TRACKING_PASSWORD",
        "token",
        "model.api_key",
        "db-key",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["TOKENIZERS_PARALLELISM", "max_new_tokens", "HF_HUB_OFFLINE", "keyboard", "monkey", "stage1.lr"]
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


def test_secret_values_come_from_secret_names_only() -> None:
    env = {"HF_TOKEN": "hf_abcdefgh", "MY_KEY": "k-12345678", "PATH": "/usr/bin", "SHORT_TOKEN": "abc"}
    # Short values would match by chance in ordinary text: not scrubbed.
    assert secret_values(env) == ["hf_abcdefgh", "k-12345678"]  # longest first


def test_redact_nested_and_flat() -> None:
    secrets = ["hf_secretvalue"]
    data = {
        "model": {"llm": "tiny-llama", "api_key": "abc", "hub_token": None},
        "paths": ["/data/hf_secretvalue/x.json", 3],
        "lr": 0.001,
    }
    out = redact(data, secrets)
    assert out == {
        "model": {"llm": "tiny-llama", "api_key": MASK, "hub_token": None},
        "paths": [f"/data/{MASK}/x.json", 3],
        "lr": 0.001,
    }
    assert data["model"]["api_key"] == "abc"  # a copy; the input is untouched
    flat = redact_flat({"model.api_key": "abc", "note": "token hf_secretvalue used", "n": 3}, secrets)
    assert flat == {"model.api_key": MASK, "note": f"token {MASK} used", "n": "3"}
    assert scrub("a hf_secretvalue b hf_secretvalue", secrets) == f"a {MASK} b {MASK}"
