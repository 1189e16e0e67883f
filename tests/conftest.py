"""Shared fixtures and helpers of the test suite (read this before writing a slow fixture).

The suite runs in the kernel mode of the command line (pinned AVX2 kernels, set here before
torch loads) and at one torch thread, so that what a test computes in-process and what a
``landscape`` subprocess computes agree bit for bit.

Trained runs (train once per session, never once per file):

* ``digits_tiny`` (session): the checkpoint root of ``analyses/digits_tiny.toml`` with all five
  runs (ptq, kd, gdfq, kl, ait; 3 epochs of 4 iterations) and their teacher, trained once per
  test session (a few seconds)::

      <root>/teachers/*.pt    <root>/digits_tiny/{ptq,kd,gdfq,kl,ait}-seed0/

  It is shared by every test that asks for it, so it is **read-only**: a test that writes into a
  run folder (retrains, corrupts, extends) asks for ``digits_tiny_copy`` instead, or copies it
  itself with ``shutil.copytree``. At the end of the session the fixture checks that no file under
  the root changed (a test that wrote into it errors there, naming the files).
* ``digits_tiny_copy`` (function): a private copy of that root under ``tmp_path / "ck"``.
* ``tiny_kd``: the same root (the name the trust tests use for its ``kd`` run).
* ``tiny_runs.TINY`` / ``tiny_runs.recipe``: the recipe file and its loaded dict;
  ``tiny_runs.train_tiny(recipe, out, runs)`` trains (a changed copy of) it quietly on the CPU.
* ``tests/fixtures/tiny_pipeline.toml``: the one tiny *pipeline* recipe (two epochs, five runs,
  cheap [analysis] settings) of the pipeline, analyzer and determinism tests; load it with
  ``tiny_runs.tiny_pipeline()`` and change a copy, never paste another one.

Curvature references: ``make_model``/``make_batches`` (a float64 CNN with BatchNorm in eval
mode, and data) and ``exact_hessian`` (``torch.func.hessian``, memoised on the *content* of the
model, the loss and the batches: see ``content_key``).
"""

import os

from landscape.kernels import REPRODUCIBLE, pinned_env

os.environ.update(pinned_env(os.environ, REPRODUCIBLE))

import functools  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

# One torch thread for the whole session, as every `landscape` process runs (the recipe's
# `threads`): the tiny models here are fastest so, a shared machine does not make idle threads
# spin, and no test's numbers depend on which test ran before it (test_compare and the
# distributed tests used to leave the count at 1 for every later file). A test about thread
# counts sets its own and restores it.
torch.set_num_threads(1)


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.Tanh()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(self.conv(x)))).flatten(1))


def make_model(seed: int) -> TinyCNN:
    torch.manual_seed(seed)
    m = TinyCNN().double()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def make_batches(sizes, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g))
        for n in sizes
    ]


_CACHE = {}


def _digest(h, obj, keep: list, depth: int = 0) -> None:
    """Feed ``obj``'s content into the hash ``h``: tensors by dtype, shape and bytes, modules by
    type, mode, and every parameter and buffer (registered submodules such as a teacher included),
    functions by code, defaults and closure cells, plain objects by type and attributes. What it
    cannot read (or past a depth of 6) it keys by identity and keeps a reference in ``keep``, so
    that the identity cannot be reused by another object while the cache lives: never a stale
    hit, at worst a miss."""
    def put(tag, data=b""):
        h.update(tag.encode() + b"\0" + (data if isinstance(data, bytes) else str(data).encode()) + b"\1")

    if depth > 6:
        put("id", id(obj))
        keep.append(obj)
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        put(type(obj).__name__, repr(obj))
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        put("tensor", f"{t.dtype}{tuple(t.shape)}")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, nn.Module):
        put("module", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj.training}")
        for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
            put("name", name)
            _digest(h, t, keep, depth + 1)
        extra = {k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training"}
        _digest(h, extra, keep, depth + 1)
    elif isinstance(obj, (list, tuple)):
        put(type(obj).__name__, len(obj))
        for x in obj:
            _digest(h, x, keep, depth + 1)
    elif isinstance(obj, dict):
        put("dict", len(obj))
        for k, v in obj.items():
            _digest(h, k, keep, depth + 1)
            _digest(h, v, keep, depth + 1)
    elif isinstance(obj, (types.ModuleType, type)):
        put("named", f"{getattr(obj, '__module__', '')}.{obj.__qualname__ if isinstance(obj, type) else obj.__name__}")
    elif isinstance(obj, types.FunctionType):
        put("function", f"{obj.__module__}.{obj.__qualname__}")
        codes, names = [obj.__code__], []
        while codes:  # nested functions' code too: their bytecode and the globals they read
            code = codes.pop()
            h.update(code.co_code)
            _digest(h, [repr(c) for c in code.co_consts if not isinstance(c, types.CodeType)], keep, depth + 1)
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            names += code.co_names
        _digest(h, [obj.__defaults__, obj.__kwdefaults__], keep, depth + 1)
        _digest(h, [c.cell_contents for c in obj.__closure__ or ()], keep, depth + 1)
        _digest(h, {n: obj.__globals__[n] for n in names if n in obj.__globals__}, keep, depth + 1)
    elif isinstance(obj, types.MethodType):
        _digest(h, ["method", obj.__func__, obj.__self__], keep, depth + 1)
    elif isinstance(obj, functools.partial):
        _digest(h, ["partial", obj.func, obj.args, obj.keywords], keep, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        put("object", f"{type(obj).__module__}.{type(obj).__qualname__}")
        _digest(h, dict(vars(obj)), keep, depth + 1)
    else:
        put("id", id(obj))
        keep.append(obj)


def content_key(model, loss_fn, batches, names=None) -> tuple[str, list]:
    """A key for the exact Hessian of ``loss_fn`` at ``model`` on ``batches``: the SHA-256 of the
    bytes of every parameter and buffer of the model, of the loss (its type and settings, and the
    content of every module, tensor or closure it holds: a teacher's weights included), of every
    tensor of every batch (labels included), and of the parameter names. Returns the key and the
    objects keyed by identity (to be kept alive with the cached value)."""
    h, keep = hashlib.sha256(), []
    _digest(h, model, keep)
    _digest(h, loss_fn, keep)
    _digest(h, list(batches), keep)
    _digest(h, None if names is None else list(names), keep)
    return h.hexdigest(), keep


def exact_hessian(model, loss_fn, batches, names=None):
    """Exact Hessian of the size-weighted mean loss w.r.t. the named parameters (flat).

    Memoised on the content of the model, the loss and the data (``content_key``;
    torch.func.hessian is the slow part)."""
    model.eval()
    key, keep = content_key(model, loss_fn, batches, names)
    if key not in _CACHE:
        _CACHE[key] = (_exact_hessian(model, loss_fn, batches, names), keep)
    return _CACHE[key][0]


def _exact_hessian(model, loss_fn, batches, names=None):
    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    theta0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    total = sum(b[0].shape[0] for b in batches)

    def f(theta):
        d, o = {}, 0
        for n in names:
            d[n] = theta[o : o + params[n].numel()].view_as(params[n])
            o += params[n].numel()

        def proxy(x):
            return functional_call(model, d, (x,))

        return sum(b[0].shape[0] * loss_fn(proxy, b) for b in batches) / total

    return torch.func.hessian(f)(theta0), f, theta0


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest and robust on a shared machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model():
    return make_model(0)


@pytest.fixture
def teacher():
    return make_model(123)


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def digits_tiny(tmp_path_factory):
    """The checkpoint root of ``analyses/digits_tiny.toml``: all five runs and their teacher,
    trained once per session. Read-only (see the module docstring); checked at the session's end."""
    from landscape.config import load_recipe
    from tiny_runs import TINY, train_tiny

    out = tmp_path_factory.mktemp("digits_tiny")
    train_tiny(load_recipe(TINY), out)
    before = _files(out)
    yield out
    after = _files(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"a test wrote into the shared digits_tiny fixture ({', '.join(changed[:5])}); "
                         "use digits_tiny_copy for a test that changes run folders")


@pytest.fixture
def digits_tiny_copy(digits_tiny, tmp_path):
    """A private copy of the ``digits_tiny`` root at ``tmp_path / "ck"`` (change it freely)."""
    return Path(shutil.copytree(digits_tiny, tmp_path / "ck"))


@pytest.fixture(scope="session")
def tiny_kd(digits_tiny):
    """The ``digits_tiny`` root (its ``kd`` run and teacher are what the trust tests use); read-only."""
    return digits_tiny


# ----------------------------------------------------------------------------- CPU seconds per test
# ``LANDSCAPE_TEST_CPU=FILE pytest ...`` appends one line per test phase to FILE: the CPU seconds
# (user + system) of this process and of the child processes it waited for (subprocesses, spawned
# ranks): far less dependent than wall-clock durations on how busy a shared machine is, though not
# free of it (a process with several torch threads spins while a sibling thread waits for a core).

def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cpu_phase(item, phase):
    path = os.environ.get("LANDSCAPE_TEST_CPU")
    t0 = _cpu_seconds() if path else 0.0
    yield
    if path:
        with open(path, "a") as f:
            f.write(f"{_cpu_seconds() - t0:.2f}\t{phase}\t{item.nodeid}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    yield from _cpu_phase(item, "setup")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield from _cpu_phase(item, "call")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    yield from _cpu_phase(item, "teardown")
