"""One per-layer trace workload in a fresh process, then its peak RSS (``make bench`` section (f)).

    python benchmarks/peak_rss.py whole|views|separate PROBES

Imports only torch and landscape, so that the peak is the workload's, not other libraries'. The
peak is ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` would report the parent's RSS: Linux
carries it across fork + exec).
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import cnn_problem  # noqa: E402

from landscape.curvature import Hessian  # noqa: E402
from landscape.curvature.layers import layer_of  # noqa: E402
from landscape.losses import cross_entropy  # noqa: E402


def main(mode: str, probes: int) -> None:
    torch.set_num_threads(2)
    model, x, y = cnn_problem()
    t0 = time.perf_counter()
    H = Hessian(model, cross_entropy(), [(x, y)])
    kept = [H]
    H.trace(max_matvecs=probes, seed=0)
    if mode == "views":  # diagonal blocks of the one operator: its cached graph is shared
        for view in H.layers().values():
            view.trace(max_matvecs=probes, seed=0)
    elif mode == "separate":  # one operator (and graph) per layer, all alive, as a cache of operators keeps them
        groups: dict[str, list[str]] = {}
        for n in H.names:
            groups.setdefault(layer_of(n), []).append(n)
        for names in groups.values():
            Hl = Hessian(model, cross_entropy(), [(x, y)], params=names)
            Hl.trace(max_matvecs=probes, seed=0)
            kept.append(Hl)
    graphs = sum(h.cached_bytes for h in kept) / 2**20
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))  # KiB
    print(f"PEAK {peak} {time.perf_counter() - t0:.2f} {graphs:.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
