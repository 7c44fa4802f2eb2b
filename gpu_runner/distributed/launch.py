"""Starting process groups on one host: environment, init, torchrun commands, local spawn.

This module owns the launch environment. NVLink multicast (NVLS / symmetric-memory
multicast) stays OFF everywhere we start processes: `NVLS_OFF_ENV` is written into
`os.environ` before `init_process_group` (`init_distributed`), into every environment a
launcher builds (`launcher_env`), and into the children of `spawn_local`.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "NVLS_OFF_ENV",
    "disable_nvlink_multicast",
    "free_port",
    "init_distributed",
    "launcher_env",
    "spawn_local",
    "torchrun_command",
]

NVLS_OFF_ENV: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def disable_nvlink_multicast(environ: MutableMapping[str, str] | None = None) -> None:
    """Write `NVLS_OFF_ENV` into `environ` (default `os.environ`), overriding any other value."""
    target = os.environ if environ is None else environ
    target.update(NVLS_OFF_ENV)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it; a race with others is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launcher_env(
    base: Mapping[str, str] | None = None, *, master_addr: str = "127.0.0.1", master_port: int | None = None
) -> dict[str, str]:
    """An environment for launching ranks: a copy of `base` (default `os.environ`) with
    NVLink multicast off, PYTHONPATH led by the repository root, and MASTER_ADDR /
    MASTER_PORT (a free port when none is given)."""
    env = dict(os.environ if base is None else base)
    disable_nvlink_multicast(env)
    repo = str(Path(__file__).resolve().parents[2])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in parts if p != repo])
    env["MASTER_ADDR"] = master_addr
    env["MASTER_PORT"] = str(free_port(master_addr) if master_port is None else master_port)
    return env


def torchrun_command(
    script: str, *, nproc_per_node: int, args: Sequence[str] = (), master_port: int | None = None
) -> list[str]:
    """argv that runs `script` under torchrun (`python -m torch.distributed.run`) with
    `nproc_per_node` ranks on this host, rendezvous on 127.0.0.1. Run it with `launcher_env()`."""
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be a positive integer, got {nproc_per_node!r}")
    port = free_port() if master_port is None else master_port
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
        "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={port}", script, *args,
    ]  # fmt: skip


def init_distributed(
    backend: str | None = None, *, timeout_s: float = 600.0
) -> tuple[int, int, torch.device]:
    """Join the process group described by the environment (torchrun's RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); without RANK, a group of one on a free local port.

    backend: "nccl", "gloo" or None (nccl where CUDA is available, else gloo). With nccl the
    rank's device is cuda:LOCAL_RANK (set as current). NVLink multicast is switched off in
    `os.environ` first. Returns (rank, world_size, device). Already initialised: returns the
    current group's values.
    """
    disable_nvlink_multicast()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU
        dist.init_process_group(**kwargs)
    return dist.get_rank(), dist.get_world_size(), device


def _bootstrap(
    rank: int, fn: Callable[..., Any], nprocs: int, port: int, backend: str, out_dir: str, args: tuple
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    init_distributed(backend, timeout_s=120.0)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn_local(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str = "gloo") -> list[Any]:
    """Run `fn(*args)` in `nprocs` fresh processes forming one process group on 127.0.0.1
    (torch.multiprocessing spawn, NVLink multicast off); return each rank's result (it must
    be picklable by `torch.save`), rank order. `fn` must be importable by module name.
    A failing rank raises in the caller."""
    import torch.multiprocessing as mp

    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive integer, got {nprocs!r}")
    disable_nvlink_multicast()  # inherited by the children
    with tempfile.TemporaryDirectory(prefix="spawn_local_") as out_dir:
        mp.spawn(_bootstrap, args=(fn, nprocs, free_port(), backend, out_dir, args), nprocs=nprocs, join=True)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(nprocs)]
