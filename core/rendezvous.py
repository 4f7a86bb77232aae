"""The environment variables through which a process joins a torch.distributed group (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping

# Set by torchrun, Ray Train or a one-process group made in-process; a child process that inherits them
# joins (or binds the port of) a group that is not its own.
RENDEZVOUS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "NODE_RANK",
    "TORCHELASTIC_RUN_ID",
)


def without_rendezvous(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less any process group's rendezvous: for a child that starts a group of its own."""
    return {k: v for k, v in environ.items() if k not in RENDEZVOUS}
