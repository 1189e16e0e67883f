"""Side-by-side benchmark of the curvature engine against PyHessian 0.1 (``make bench``).

Everything is measured in one run, on one machine, with ``torch.set_num_threads(2)``:

(a) time of one Hessian-vector product ÷ time of one gradient on the small CNN (batch 256 of
    3×32×32, fixed seed): ours (cached first-order graph), PyHessian's cached product, and a
    plain double backward (forward + backward with create_graph + backward), interleaved,
    medians over rounds;
(b) wall time to the top eigenvalue at 1e-3 relative tolerance, ours ÷ PyHessian's, with the
    relative error against a tight Lanczos reference (graph construction included in both);
(c) trace: error against a long Hutch++ reference run at PyHessian's number of products (its
    stopping rule, tol 1e-3), ours (Hutchinson and Hutch++ at the same count) on the CNN; the
    same on a 1,770-parameter MLP whose exact trace is known, over many seeds; and the coverage
    of our stderr stopping rule (|error| ≤ 3·stderr) over 100 seeds on that MLP;
(d) resident memory (RSS from /proc/self/statm) after 1,000 products vs after 10;
(e) the freshness check every product runs (parameters, buffers, module attributes and the
    loss's reachable state compared with the state the cached graph was built from; the batch
    fingerprints are checked where batches are read again), as a fraction of one HVP: on the CNN, and on a worst
    case for it (a 6.3M-parameter MLP at batch 8: much state, little arithmetic);
(f) peak RSS (``VmHWM`` of a fresh process each) of a whole-model trace, of per-layer
    traces from views of one operator, and of per-layer traces with one operator per layer;
(g) the GGN-vector product (ours, cached) ÷ gradient beside the HVP's in (a), and curvlinops'
    ``GGNLinearOperator`` product if curvlinops imports (it is not a dependency: install it with
    ``pip install --no-deps curvlinops-for-pytorch einops einconv opt-einsum linear_operator``);
(h) data-parallel products: Hessian-vector products per second on the CNN's batch split into 8
    batches of 32, one process × 2 threads against 2 processes × 1 thread (torchrun, gloo, 4
    batches each), launched alternately; and the share of a product's time in its all-reduce
    (``benchmarks/dist_products.py``);
(i) the price of reproducible kernels (:mod:`landscape.kernels`): one training epoch, one
    Hessian-vector product and the analysis of one checkpoint of the default recipe, each in a
    fresh process (the kernels are chosen when torch loads) in the reproducible and the fast
    mode, alternating (``benchmarks/kernels_cost.py``), one torch thread as the pipeline.

The machine may be shared: timings are medians of interleaved repeats. ``BENCH_QUICK=1``
shrinks the repeat counts for a smoke run.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import cnn_problem, mlp_problem  # noqa: E402

from landscape.curvature import GGN, Hessian, hutchinson, hutchpp  # noqa: E402
from landscape.losses import cross_entropy  # noqa: E402

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
from pyhessian import hessian as PyHessian  # noqa: E402
from pyhessian.utils import hessian_vector_product  # noqa: E402

PYHESSIAN_PRODUCTS = [0]

try:  # optional, for (g) only
    from curvlinops import GGNLinearOperator  # noqa: E402
except Exception as exc:  # pragma: no cover - depends on the environment
    GGNLinearOperator = None
    CURVLINOPS_ERROR = f"{type(exc).__name__}: {exc}"


def _counted_hvp(gradsH, params, v):
    PYHESSIAN_PRODUCTS[0] += 1
    return hessian_vector_product(gradsH, params, v)


sys.modules["pyhessian.hessian"].hessian_vector_product = _counted_hvp  # count PyHessian's products (its single-batch path)

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
#: ``run.py --publish README.md``: copy this run's table into that file's ``bench`` block.
PUBLISH = sys.argv[sys.argv.index("--publish") + 1] if "--publish" in sys.argv[:-1] else None
ROUNDS = 3 if QUICK else 9
EIG_REPEATS = 1 if QUICK else 5
TRACE_SEEDS = 1 if QUICK else 2
TRACE_REF = 30 if QUICK else 150
COVERAGE_SEEDS = 20 if QUICK else 100
MEM_PRODUCTS = 100 if QUICK else 1000
PEAK_PROBES = 4 if QUICK else 10
DIST_ROUNDS, DIST_PER_ROUND, DIST_LAUNCHES = (3, 2, 1) if QUICK else (9, 4, 2)


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_LOG: list[str] = []


def line(text: str = "") -> None:
    """Print one line of the bench's output and keep it for ``benchmarks/output.txt``."""
    print(text, flush=True)
    _LOG.append(text)


def pyhessian_for(model, x, y):
    """PyHessian on its own copy of the model (it forces eval() and leaves graphs in .grad)."""
    return PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)


# ---------------------------------------------------------------------------------- (a)
def bench_products(summary: dict) -> None:
    line("(a) one Hessian-vector product / one gradient, small CNN, batch 256, 2 threads")
    model, x, y = cnn_problem()
    params = [p for p in model.parameters()]
    n = sum(p.numel() for p in params)
    line(f"    model: {n} parameters")
    H = Hessian(model, cross_entropy(), [(x, y)])
    G = GGN(model, cross_entropy(), [(x, y)])
    ph = pyhessian_for(model, x, y)
    cl = None
    if GGNLinearOperator is not None:
        cl = GGNLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=gen)
    v_parts = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    ph_v = [t.clone() for t in v_parts]

    def gradient():
        loss = F.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params)

    def ours():
        return H @ v

    def pyh():
        return hessian_vector_product(ph.gradsH, ph.params, ph_v)

    def plain():
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=v_parts)

    def ggn():
        return G @ v

    def curvlinops_ggn():
        return cl @ v

    fns = {"gradient": gradient, "ours (cached)": ours, "pyhessian (cached)": pyh, "plain double backward": plain,
           "ours GGN (cached)": ggn}
    if cl is not None:
        fns["curvlinops GGN"] = curvlinops_ggn
    for f in fns.values():  # warm-up (also builds our cache)
        f()
    # sanity: the three products agree
    a, b, c = ours(), torch.cat([t.reshape(-1) for t in pyh()]), torch.cat([t.reshape(-1) for t in plain()])
    line(f"    products agree: |ours-pyhessian|/|ours| = {float((a - b).norm() / a.norm()):.1e}, "
         f"|ours-plain|/|ours| = {float((a - c).norm() / a.norm()):.1e}")
    if cl is not None:
        gg, gc = ggn(), curvlinops_ggn()
        line(f"    GGN products agree: |ours-curvlinops|/|ours| = {float((gg - gc).norm() / gg.norm()):.1e}")
    else:
        line(f"    curvlinops not importable here ({CURVLINOPS_ERROR}): its GGN product is not timed")
    times = {k: [] for k in fns}
    for r in range(ROUNDS):
        order = list(fns.items())
        if r % 2:
            order.reverse()
        for k, f in order:
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(t) for k, t in times.items()}
    g = med["gradient"]
    for k, t in med.items():
        spread = (min(times[k]) * 1e3, max(times[k]) * 1e3)
        line(f"    {k:24s} median {t * 1e3:8.1f} ms  (min {spread[0]:.1f}, max {spread[1]:.1f})  ratio to gradient {t / g:5.2f}")
    # a ratio from each round's own gradient is more robust when the machine is shared
    per_round = [o / gr for o, gr in zip(times["ours (cached)"], times["gradient"])]
    line(f"    ours/gradient per round: median {statistics.median(per_round):.2f} (target <= 1.6)")
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for k in ("gradient", "ours (cached)", "ours GGN (cached)"):
        with FlopCounterMode(display=False) as fc:
            fns[k]()
        flops[k] = fc.get_total_flops()
    line(f"    arithmetic (conv + matmul FLOPs): gradient {flops['gradient'] / 1e9:.2f} GFLOP, HVP {flops['ours (cached)'] / 1e9:.2f} GFLOP, "
         f"ratio {flops['ours (cached)'] / flops['gradient']:.2f} (an exact product must do this arithmetic; only the gradient's non-FLOP work, e.g. max-pool, lets the time ratio dip below it); "
         f"GGN product {flops['ours GGN (cached)'] / 1e9:.2f} GFLOP")
    summary["flop_ratio"] = flops["ours (cached)"] / flops["gradient"]
    summary["hvp_ratio"] = med["ours (cached)"] / g
    summary["hvp_ratio_per_round"] = statistics.median(per_round)
    summary["pyhessian_ratio"] = med["pyhessian (cached)"] / g
    summary["plain_ratio"] = med["plain double backward"] / g
    summary["t_hvp"] = med["ours (cached)"]
    summary["ggn_ratio"] = med["ours GGN (cached)"] / g
    summary["ggn_ratio_per_round"] = statistics.median(o / gr for o, gr in zip(times["ours GGN (cached)"], times["gradient"]))
    summary["curvlinops_ggn_ratio"] = med["curvlinops GGN"] / g if cl is not None else math.nan


# ---------------------------------------------------------------------------------- (b)
def bench_eigen(summary: dict) -> None:
    line("(b) top eigenvalue at 1e-3 relative tolerance, small CNN (graph construction included)")
    model, x, y = cnn_problem()
    t0 = time.perf_counter()
    ref = Hessian(model, cross_entropy(), [(x, y)]).eigenpairs(method="lanczos", tol=1e-8, max_iter=200)
    lam = float(ref.values[0])
    line(f"    reference (Lanczos, residual tol 1e-8): lambda_max = {lam:.6f}, residual {float(ref.residuals[0]):.1e}, "
         f"{ref.n_matvecs} products, {time.perf_counter() - t0:.1f} s")
    rows = {"pyhessian power": [], "ours lanczos": [], "ours power": []}
    for r in range(EIG_REPEATS):
        torch.manual_seed(r)
        PYHESSIAN_PRODUCTS[0] = 0
        t0 = time.perf_counter()
        ph = pyhessian_for(model, x, y)
        ev, _ = ph.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        rows["pyhessian power"].append((time.perf_counter() - t0, abs(ev[0] - lam) / lam, PYHESSIAN_PRODUCTS[0]))
        del ph
        for method in ("lanczos", "power"):
            t0 = time.perf_counter()
            pairs = Hessian(model, cross_entropy(), [(x, y)]).eigenpairs(k=1, method=method, tol=1e-3, seed=r)
            rows[f"ours {method}"].append(
                (time.perf_counter() - t0, abs(float(pairs.values[0]) - lam) / lam, pairs.n_matvecs)
            )
    med = {}
    for k, rs in rows.items():
        t = statistics.median(r[0] for r in rs)
        err = statistics.median(r[1] for r in rs)
        mv = statistics.median(r[2] for r in rs)
        med[k] = (t, err)
        mv_txt = f"{mv:5.0f} products"
        line(f"    {k:18s} {t:7.2f} s  {mv_txt}  rel. error {err:.1e}  (max {max(r[1] for r in rs):.1e})")
    tp = med["pyhessian power"][0]
    line(f"    time ratio ours/pyhessian: lanczos {med['ours lanczos'][0] / tp:.2f}, power {med['ours power'][0] / tp:.2f} (target <= 0.67)")
    line("    (power vs power is the same algorithm; ours stops on the relative residual <= 1e-3, which bounds the"
         " error (eigenvalue error ~ residual^2), PyHessian's on a 1e-3 change of the estimate, which does not;"
         " the reliable gain is Lanczos, with the same residual rule)")
    summary["eig_ratio_lanczos"] = med["ours lanczos"][0] / tp
    summary["eig_ratio_power"] = med["ours power"][0] / tp
    summary["eig_err"] = {k: v[1] for k, v in med.items()}


# ---------------------------------------------------------------------------------- (c)
def bench_trace_cnn(summary: dict) -> None:
    line("(c1) trace on the small CNN: error vs a long reference at PyHessian's number of products")
    model, x, y = cnn_problem()
    H = Hessian(model, cross_entropy(), [(x, y)])
    t0 = time.perf_counter()
    ref = hutchpp(H, max_matvecs=TRACE_REF, seed=12345)
    line(f"    reference: Hutch++ with {ref.n_matvecs} products: {ref.value:.3f} ± {ref.stderr:.3f} "
         f"({100 * ref.stderr / abs(ref.value):.2f} %), {time.perf_counter() - t0:.1f} s")
    errs = {"pyhessian": [], "ours hutchinson": [], "ours hutch++": []}
    for s in range(TRACE_SEEDS):
        torch.manual_seed(s)
        ph = pyhessian_for(model, x, y)
        samples = ph.trace(maxIter=100, tol=1e-3)
        m = len(samples)
        del ph
        errs["pyhessian"].append((m, abs(np.mean(samples) - ref.value) / abs(ref.value)))
        e1 = hutchinson(H, max_matvecs=m, seed=s)
        errs["ours hutchinson"].append((m, abs(e1.value - ref.value) / abs(ref.value), e1.stderr / abs(e1.value)))
        if m >= 6:
            e2 = hutchpp(H, max_matvecs=m, seed=s)
            errs["ours hutch++"].append((m, abs(e2.value - ref.value) / abs(ref.value), e2.stderr / abs(e2.value)))
        line(f"    seed {s}: PyHessian stopped after {m} products, error {100 * errs['pyhessian'][-1][1]:.2f} %; "
             f"ours at {m}: Hutchinson {100 * errs['ours hutchinson'][-1][1]:.2f} % (reported stderr {100 * e1.stderr / abs(e1.value):.2f} %)"
             + (f", Hutch++ {100 * errs['ours hutch++'][-1][1]:.2f} % (stderr {100 * e2.stderr / abs(e2.value):.2f} %)" if m >= 6 else ""))
    summary["trace_cnn"] = {k: float(np.mean([e[1] for e in v])) if v else math.nan for k, v in errs.items()}


def bench_trace_mlp(summary: dict) -> None:
    torch.set_num_threads(1)  # tiny products: one thread is faster
    model, x, y = mlp_problem()
    H = Hessian(model, cross_entropy(), [(x, y)])
    n = H.shape[0]
    exact = float(torch.trace(H.dense()))
    line(f"(c2) trace on a {n}-parameter MLP with exact trace {exact:.4f}: PyHessian's rule vs ours at equal products, {COVERAGE_SEEDS} seeds")
    pe, he, ppe, ms = [], [], [], []
    for s in range(COVERAGE_SEEDS):
        torch.manual_seed(s)
        ph = PyHessian(copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        samples = ph.trace(maxIter=100, tol=1e-3)
        m = len(samples)
        ms.append(m)
        pe.append(abs(np.mean(samples) - exact) / exact)
        he.append(abs(hutchinson(H, max_matvecs=m, seed=s).value - exact) / exact)
        if m >= 6:
            ppe.append(abs(hutchpp(H, max_matvecs=m, seed=s).value - exact) / exact)
    line(f"    PyHessian: median {statistics.median(ms):.0f} products (range {min(ms)}-{max(ms)}); relative error median {100 * np.median(pe):.2f} %, "
         f"95th pct {100 * np.percentile(pe, 95):.2f} %, max {100 * max(pe):.2f} %")
    line(f"    ours Hutchinson at the same products: median {100 * np.median(he):.2f} %, 95th pct {100 * np.percentile(he, 95):.2f} %, max {100 * max(he):.2f} %")
    if ppe:
        line(f"    ours Hutch++ at the same products (runs with >= 6): median {100 * np.median(ppe):.2f} %, 95th pct {100 * np.percentile(ppe, 95):.2f} %, max {100 * max(ppe):.2f} %")
    line(f"(c3) coverage of our stopping rule (rtol 0.05, min 10, max 2000 products) on the same MLP, {COVERAGE_SEEDS} seeds")
    for name, fn in (("hutchinson", hutchinson), ("hutch++", hutchpp)):
        inside, mvs, rel = 0, [], []
        for s in range(COVERAGE_SEEDS):
            est = fn(H, max_matvecs=2000, rtol=0.05, seed=1000 + s)
            inside += abs(est.value - exact) <= 3 * est.stderr
            mvs.append(est.n_matvecs)
            rel.append(abs(est.value - exact) / exact)
        cov = inside / COVERAGE_SEEDS
        line(f"    {name:10s}: |error| <= 3 stderr in {100 * cov:.0f} % of seeds (target >= 95 %); median {statistics.median(mvs):.0f} products; "
             f"max relative error {100 * max(rel):.2f} %")
        summary[f"coverage_{name}"] = cov
    summary["trace_mlp"] = {"pyhessian_median": float(np.median(pe)), "pyhessian_max": float(max(pe)), "ours_median": float(np.median(he))}
    torch.set_num_threads(2)


# ---------------------------------------------------------------------------------- (d)
def bench_memory(summary: dict) -> None:
    line(f"(d) resident memory after {MEM_PRODUCTS} products vs after 10 (small CNN, batch 32 to keep the run short)")
    model, x, y = cnn_problem(batch=32)
    H = Hessian(model, cross_entropy(), [(x, y)])
    n = H.shape[0]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, generator=gen)
    for _ in range(10):
        v = H @ v
        v = v / v.norm()
    gc.collect()
    r10 = rss_mib()
    for _ in range(MEM_PRODUCTS - 10):
        v = H @ v
        v = v / v.norm()
    gc.collect()
    r_end = rss_mib()
    growth = (r_end - r10) / r10
    line(f"    RSS after 10: {r10:.1f} MiB, after {H.n_matvecs}: {r_end:.1f} MiB, growth {100 * growth:+.2f} % (target < 5 %)")
    summary["mem_growth"] = growth


# ---------------------------------------------------------------------------------- (e)
def bench_freshness(summary: dict) -> None:
    from freshness import bench_freshness as run  # benchmarks/freshness.py, which also runs alone

    run(line, summary, ROUNDS)


# ---------------------------------------------------------------------------------- (f)
def bench_peak_memory(summary: dict) -> None:
    import subprocess

    line(f"(f) peak RSS of per-layer traces (small CNN, batch 256, {PEAK_PROBES} probes per trace, a fresh process each)")
    res = {}
    for mode, label in (("whole", "whole-model trace only"), ("views", "whole + per-layer from one operator (views)"),
                        ("separate", "whole + per-layer, one operator per layer")):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak_rss.py")
        out = subprocess.run([sys.executable, script, mode, str(PEAK_PROBES)], capture_output=True, text=True)
        peak_line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK ")]
        if out.returncode or not peak_line:
            line(f"    {label}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
            continue
        kib, secs, graphs = peak_line[0].split()[1:]
        res[mode] = int(kib) / 1024
        line(f"    {label:46s} peak RSS {res[mode]:8.1f} MiB, cached graphs {float(graphs):6.1f} MiB, {float(secs):6.1f} s")
    if len(res) == 3:
        line(f"    views / whole {res['views'] / res['whole']:.2f}; one operator per layer / whole {res['separate'] / res['whole']:.2f}")
        summary["peak"] = res


# ---------------------------------------------------------------------------------- (h)
def _dist_run(world: int) -> dict | None:
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_products.py")
    args = ["--rounds", str(DIST_ROUNDS), "--per-round", str(DIST_PER_ROUND)]
    if world == 1:
        cmd = [sys.executable, script, "--threads", "2", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", script,
               "--threads", "1", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    found = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not found:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
        line(f"    {world} process(es): failed ({tail})")
        return None
    return json.loads(found[0][7:])


def bench_distributed(summary: dict) -> None:
    line(f"(h) products/s over 8 batches of 32 (small CNN): 1 process x 2 threads vs 2 processes x 1 thread (gloo), "
         f"{DIST_ROUNDS} rounds of {DIST_PER_ROUND} products, {DIST_LAUNCHES} launch(es) each, alternating")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(DIST_LAUNCHES):
        for world in ((1, 2) if i % 2 == 0 else (2, 1)):
            r = _dist_run(world)
            if r is not None:
                runs[world].append(r)
    if not runs[1] or not runs[2]:
        return
    one = statistics.median(r["products_per_s"] for r in runs[1])
    two = statistics.median(r["products_per_s"] for r in runs[2])
    share = statistics.median(r["allreduce_share"] for r in runs[2])
    comm = statistics.median(r["comm_share"] for r in runs[2])
    comm_ms = 1e3 * statistics.median(r["comm_s"] for r in runs[2])
    line(f"    1 process x 2 threads: {one:6.2f} products/s; 2 processes x 1 thread: {two:6.2f} products/s "
         f"(x{two / one:.2f})")
    line(f"    all-reduce inside a product (waiting for the other rank included): {100 * share:.1f} % of its time; "
         f"the all-reduce alone ({runs[2][0]['n_params']} + 2 floats): {comm_ms:.2f} ms = {100 * comm:.1f} %")
    summary["dist"] = {"one": one, "two": two, "share": share, "comm": comm}


# ---------------------------------------------------------------------------------- (i)
def bench_kernels(summary: dict) -> None:
    from kernels_cost import measure

    rounds = 1 if QUICK else 2
    line(f"(i) reproducible / fast kernels, default recipe (gdfq), 1 thread, {rounds} alternating round(s) of fresh processes")
    res = measure(rounds)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("epoch_s", "hvp_s", "analysis_s")}
           for m, rs in res.items()}
    ratio = {k: med["reproducible"][k] / med["fast"][k] for k in med["fast"]}
    for k, label in (("epoch_s", "one training epoch"), ("hvp_s", "one HVP"), ("analysis_s", "one checkpoint's analysis")):
        line(f"    {label}: reproducible {med['reproducible'][k]:.3f} s, fast {med['fast'][k]:.3f} s (x{ratio[k]:.2f})")
    summary["kernels"] = {"ratio": ratio, "median": med, "modes": {m: rs[0]["mode"] for m, rs in res.items()}}


def main() -> None:
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    line(f"landscape curvature benchmark vs PyHessian 0.1 | torch {torch.__version__} | threads {torch.get_num_threads()} | "
         f"load average {os.getloadavg()[0]:.2f} | quick={QUICK}")
    summary: dict = {}
    bench_products(summary)
    bench_eigen(summary)
    bench_trace_cnn(summary)
    bench_trace_mlp(summary)
    bench_memory(summary)
    bench_freshness(summary)
    bench_peak_memory(summary)
    bench_distributed(summary)
    bench_kernels(summary)
    torch.set_num_threads(2)
    line()
    line("summary")
    line(f"    HVP / gradient: ours {summary['hvp_ratio']:.2f} (per-round median {summary['hvp_ratio_per_round']:.2f}; target <= 1.6), "
         f"PyHessian cached {summary['pyhessian_ratio']:.2f}, plain double backward {summary['plain_ratio']:.2f}; FLOP ratio {summary['flop_ratio']:.2f}")
    line(f"    top eigenvalue time ours/PyHessian: Lanczos {summary['eig_ratio_lanczos']:.2f}, power {summary['eig_ratio_power']:.2f} (target <= 0.67); "
         f"relative errors " + ", ".join(f"{k} {v:.1e}" for k, v in summary["eig_err"].items()))
    line("    trace error at PyHessian's product count (CNN, mean over seeds): " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in summary["trace_cnn"].items()))
    line(f"    stopping-rule coverage (3 stderr): Hutchinson {100 * summary['coverage_hutchinson']:.0f} %, Hutch++ {100 * summary['coverage_hutch++']:.0f} % (target >= 95 %)")
    line(f"    memory growth 10 -> {MEM_PRODUCTS} products: {100 * summary['mem_growth']:+.2f} % (target < 5 %)")
    line(f"    GGN product / gradient: ours {summary['ggn_ratio']:.2f} (per-round median {summary['ggn_ratio_per_round']:.2f}), "
         f"curvlinops GGNLinearOperator {summary['curvlinops_ggn_ratio']:.2f}; HVP / gradient {summary['hvp_ratio']:.2f}")
    line(f"    freshness check / HVP: {100 * summary['fresh_cnn']:.2f} % on the CNN (target <= 2 %), "
         f"{100 * summary['fresh_worst']:.2f} % worst case (6.3M parameters, batch 8; one bare read of its weights "
         f"{100 * summary['fresh_read']:.2f} %); a non-module loss's walk {100 * summary['fresh_walk']:.3f} %")
    if "peak" in summary:
        pk = summary["peak"]
        line(f"    peak RSS, per-layer traces: views {pk['views']:.0f} MiB vs whole-model trace {pk['whole']:.0f} MiB "
             f"(one operator per layer: {pk['separate']:.0f} MiB)")
    if "dist" in summary:
        d = summary["dist"]
        line(f"    data-parallel products over 8 batches: 2 processes x 1 thread {d['two']:.2f}/s vs 1 process x 2 threads "
             f"{d['one']:.2f}/s (x{d['two'] / d['one']:.2f}); all-reduce {100 * d['share']:.1f} % of a product "
             f"({100 * d['comm']:.1f} % communication alone)")
    line(f"    load average now {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")
    path = write_results(summary, load=(load_start, os.getloadavg()[0]), seconds=time.perf_counter() - t_start)
    line(f"    written to {path}")
    if PUBLISH and not QUICK:
        from landscape.results import publish_results

        publish_results(path, PUBLISH, copy_to=path)
        line(f"    and published into {PUBLISH}")


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _table(summary: dict) -> str:
    """The README's performance table, from this run's summary; the last column says whether
    this run met each target (computed here, never typed)."""
    s = summary
    fresh = (f"{_met(s['fresh_cnn'] <= 0.02)} on the CNN; {_met(s['fresh_worst'] <= 0.02)} in the worst case")
    rows = [
        ("one HVP ÷ one gradient", f"{s['hvp_ratio']:.2f} (median of per-round ratios {s['hvp_ratio_per_round']:.2f})",
         f"PyHessian cached {s['pyhessian_ratio']:.2f}; plain double backward {s['plain_ratio']:.2f}; FLOP ratio "
         f"{s['flop_ratio']:.2f}", f"≤ 1.6: {_met(s['hvp_ratio'] <= 1.6)}"),
        ("one GGN product ÷ one gradient", f"{s['ggn_ratio']:.2f} (per round {s['ggn_ratio_per_round']:.2f})",
         f"curvlinops `GGNLinearOperator` {s['curvlinops_ggn_ratio']:.2f}" if math.isfinite(s["curvlinops_ggn_ratio"])
         else "curvlinops not installed", ""),
        ("time to the top eigenvalue at 1e-3, ours ÷ PyHessian", f"Lanczos {s['eig_ratio_lanczos']:.2f}, power "
         f"{s['eig_ratio_power']:.2f}", "relative errors " + ", ".join(f"{k} {v:.1e}" for k, v in s["eig_err"].items()),
         f"≤ 0.67: {_met(s['eig_ratio_lanczos'] <= 0.67)} (Lanczos)"),
        ("trace error at PyHessian's product count (CNN)", ", ".join(f"{k} {100 * v:.1f} %" for k, v in s["trace_cnn"].items()),
         "ours reports its standard error", ""),
        ("coverage of the rtol stopping rule (100 seeds, 3 s.e.)", f"Hutchinson {100 * s['coverage_hutchinson']:.0f} %, "
         f"Hutch++ {100 * s['coverage_hutch++']:.0f} %", "",
         f"≥ 95 %: {_met(min(s['coverage_hutchinson'], s['coverage_hutch++']) >= 0.95)}"),
        ("resident memory growth, 10 → 1,000 products", f"{100 * s['mem_growth']:+.2f} %", "",
         f"< 5 %: {_met(s['mem_growth'] < 0.05)}"),
        ("freshness check ÷ HVP", f"{100 * s['fresh_cnn']:.2f} % (CNN); {100 * s['fresh_worst']:.1f} % worst case "
         "(6.3M parameters, batch 8)", f"worst case's floor, one bare read of its weights: {100 * s['fresh_read']:.1f} %",
         f"≤ 2 %: {fresh}"),
    ]
    if "peak" in s:
        pk = s["peak"]
        rows.append(("peak RSS of per-layer traces", f"views of one operator {pk['views']:.0f} MiB "
                     f"(×{pk['views'] / pk['whole']:.2f} the whole-model trace's {pk['whole']:.0f} MiB)",
                     f"one operator per layer {pk['separate']:.0f} MiB (×{pk['separate'] / pk['whole']:.2f})", ""))
    if "dist" in s:
        d = s["dist"]
        rows.append(("products/s over 8 batches (torch.distributed, gloo)", f"2 processes × 1 thread {d['two']:.2f}, "
                     f"1 process × 2 threads {d['one']:.2f} (×{d['two'] / d['one']:.2f})",
                     f"all-reduce {100 * d['share']:.1f} % of a product ({100 * d['comm']:.1f} % communication alone)", ""))
    if "kernels" in s:
        r, m = s["kernels"]["ratio"], s["kernels"]["median"]
        rows.append(("reproducible ÷ fast kernels (default recipe, 1 thread)",
                     f"training epoch {r['epoch_s']:.2f}, HVP {r['hvp_s']:.2f}, one checkpoint's analysis "
                     f"{r['analysis_s']:.2f}",
                     f"fast: epoch {m['fast']['epoch_s']:.2f} s, HVP {1e3 * m['fast']['hvp_s']:.0f} ms, analysis "
                     f"{m['fast']['analysis_s']:.1f} s", ""))
    lines = ["| measure | ours | beside it | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {t} |" for a, b, c, t in rows]
    return "\n".join(lines)


def write_results(summary: dict, load: tuple[float, float], seconds: float) -> str:
    """``benchmarks/results.md``: this run's table in a ``bench`` block (``make bench`` publishes it
    into README.md, so no number there is typed by hand)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")
    body = (_table(summary) + f"\n\n(`make bench`, {seconds:.0f} s, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load[0]:.2f} at the start and {load[1]:.2f} at the end.)\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Results of `make bench`\n\n<!-- results:bench -->\n" + body + "<!-- /results:bench -->\n")
    with open(os.path.join(os.path.dirname(path), "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, default=float)   # the raw numbers behind the table
    with open(os.path.join(os.path.dirname(path), "output.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(_LOG) + "\n")                 # everything this run printed, for benchmarks/README.md
    return path


if __name__ == "__main__":
    main()
