"""On a cluster of several nodes: are output.root and the steps root one shared directory on every node?"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

from grid.spec import SpecError

MARKER = ".seagrid-shared-check"
_TIMEOUT_S = 120.0


class StorageNotSharedError(SpecError):
    """A results directory that some node does not see as the driver wrote it (a node-local path)."""


def _read_markers(paths: list[str], token: str) -> list[bool]:
    """On one node: which of the driver's markers this node sees, with the driver's token in it."""
    out = []
    for path in paths:
        try:
            out.append(Path(path).read_text() == token)
        except OSError:
            out.append(False)
    return out


def storage_findings(dirs: Mapping[str, Path]) -> list[str]:
    """One sentence per (node, directory) that does not see the driver's marker; nothing on one node.
    The driver writes a marker in each directory, a zero-CPU task pinned to each alive node reads it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return []
    token = uuid.uuid4().hex
    markers = {label: Path(d) / f"{MARKER}-{token}" for label, d in dirs.items()}
    for marker in markers.values():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    read = ray.remote(_read_markers)
    try:
        refs = [
            read.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote([str(m) for m in markers.values()], token)
            for n in nodes
        ]
        seen = ray.get(refs, timeout=_TIMEOUT_S)
    finally:
        for marker in markers.values():
            marker.unlink(missing_ok=True)
    out = []
    for node, flags in zip(nodes, seen, strict=True):
        for (label, d), ok in zip(dirs.items(), flags, strict=True):
            if not ok:
                out.append(
                    f"{label} {d} is not the directory the driver wrote on node {node['NodeManagerAddress']} "
                    f"({node['NodeID'][:8]}): on more than one node it must be a shared filesystem mounted at "
                    "the same path on every node; set output.root to one"
                )
    return out


def check_shared_storage(dirs: Mapping[str, Path]) -> None:
    """The call site before Tune starts: refuse (exit 2) a results directory some node cannot see."""
    findings = storage_findings(dirs)
    if findings:
        raise StorageNotSharedError(findings[0] if len(findings) == 1 else "\n".join(findings))
