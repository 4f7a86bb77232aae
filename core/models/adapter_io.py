"""Save and load a VLM's adapter weights (safetensors) with a small JSON describing their shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from torch import nn

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"


class HasAdapter(Protocol):
    adapter: nn.Module
    adapter_name: str


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def save_adapter(vlm: HasAdapter, directory: str | Path) -> Path:
    """Write `adapter.safetensors` and `adapter.json` (name and tensor shapes) into `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in vlm.adapter.state_dict().items()}
    save_file(state, str(directory / ADAPTER_WEIGHTS))
    meta = {"format": 1, "adapter": vlm.adapter_name, "shapes": _shapes(vlm.adapter)}
    (directory / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_adapter(vlm: HasAdapter, directory: str | Path) -> None:
    """Load weights written by `save_adapter` into `vlm.adapter`, in place, keeping its device and dtype.

    A different adapter name or any tensor shape that differs is a ValueError naming both sides.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / ADAPTER_META, directory / ADAPTER_WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"no adapter checkpoint at {directory}: missing {path.name}")
    rerun = "re-run the stage that wrote it (delete the directory first)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"adapter checkpoint {meta_path}: unreadable ({err}); {rerun}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"adapter checkpoint {meta_path}: expected a JSON object; {rerun}")
    if meta.get("adapter") != vlm.adapter_name:
        raise ValueError(
            f"adapter checkpoint {directory} is {meta.get('adapter')!r}, the model's adapter is "
            f"{vlm.adapter_name!r}; load a checkpoint of a trial with model.adapter {vlm.adapter_name!r}"
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"adapter checkpoint {weights_path}: unreadable, probably truncated ({err}); {rerun}"
        ) from err
    expected = _shapes(vlm.adapter)
    found = {k: list(v.shape) for k, v in state.items()}
    if found != expected:
        raise ValueError(
            f"adapter checkpoint {directory} does not fit the model's {vlm.adapter_name!r} adapter: "
            f"expected shapes {expected}, found {found}; it was saved for another LLM or vision encoder "
            "(their widths set the shapes); load the checkpoint of a trial with this model"
        )
    vlm.adapter.load_state_dict(state, strict=True)
