"""Real processes on one machine for the distributed tests: gloo ranks started by
``torch.multiprocessing`` on a free local port, each with one torch thread, with a deadline so
that a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import os
import time

import torch.multiprocessing as mp

from landscape.distributed import free_port


def _entry(rank: int, world: int, port: int, timeout: float, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    torch.set_num_threads(1)
    from landscape import distributed

    distributed.init(backend="gloo", timeout=timeout, device="cpu")
    try:
        fn(rank, world, *args)
    finally:
        distributed.shutdown()


def run_ranks(fn, world: int, *args, timeout: float = 30.0, deadline: float = 180.0) -> None:
    """``fn(rank, world, *args)`` in ``world`` processes joined into one gloo group (collective
    ``timeout`` in seconds); raises the first child's exception, or AssertionError past ``deadline``."""
    ctx = mp.start_processes(_entry, args=(world, free_port(), timeout, fn, args), nprocs=world, join=False,
                             start_method="spawn")
    end = time.monotonic() + deadline
    while not ctx.join(timeout=1.0):
        if time.monotonic() > end:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise AssertionError(f"the {world} ranks did not finish within {deadline} s (a hang)")
