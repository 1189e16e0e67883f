"""Hessian-vector products over 8 batches, in one process or as one rank of several (``make bench`` (h)).

    python benchmarks/dist_products.py --threads 2 --rounds R --per-round P           # one process
    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
           benchmarks/dist_products.py --threads 1 --rounds R --per-round P           # two ranks

The small CNN of the other sections; its batch of 256 split into 8 batches of 32; each rank
holds an even share of them (a whole number of batches). After the graphs are cached, R rounds
of P products ``H @ v``; per round the products per second. Under torchrun the time inside the
engine's one ``all_reduce`` per product is measured too (it includes waiting for the slower
rank), and separately the all-reduce of the same buffer alone, right after a barrier (the
communication itself). Rank 0 prints one line ``RESULT <json>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import cnn_problem  # noqa: E402

from landscape.curvature import Hessian  # noqa: E402
from landscape.losses import cross_entropy  # noqa: E402

N_BATCHES = 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dist = torch.distributed
    rank, world = 0, 1
    if "WORLD_SIZE" in os.environ:
        from landscape import distributed

        ctx = distributed.init(backend="gloo", device="cpu")
        rank, world = ctx.rank, ctx.world_size
    model, x, y = cnn_problem()
    batches = list(zip(x.chunk(N_BATCHES), y.chunk(N_BATCHES)))
    mine = batches[rank * N_BATCHES // world:(rank + 1) * N_BATCHES // world]
    H = Hessian(model, cross_entropy(), mine, cache_graph=True)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))

    spent = [0.0]
    if world > 1:  # time the engine's all-reduce (waiting for the other rank included)
        real = dist.all_reduce

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0

        dist.all_reduce = timed
    H @ v  # builds and caches the graphs
    rates, shares = [], []
    for _ in range(args.rounds):
        if world > 1:
            dist.barrier()
        spent[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(args.per_round):
            H @ v
        dt = time.perf_counter() - t0
        rates.append(args.per_round / dt)
        shares.append(spent[0] / dt)
    result = {"world": world, "threads": args.threads, "products_per_s": statistics.median(rates),
              "n_params": H.shape[0], "batches_per_rank": len(mine)}
    if world > 1:
        dist.all_reduce = real
        comm = []
        buf = torch.zeros(H.shape[0] + 2)
        for _ in range(max(5, args.rounds)):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            comm.append(time.perf_counter() - t0)
        per_product = 1.0 / result["products_per_s"]
        result.update(allreduce_share=statistics.median(shares), comm_s=statistics.median(comm),
                      comm_share=statistics.median(comm) / per_product)
        distributed.shutdown()
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
