r"""Has the model -- or the loss -- changed since a graph was built? An exact answer, kept in proportion.

A cached first-order graph holds references to the parameters' storage, not copies of their
values: if the values change behind autograd's back, later products silently mix the old
graph with the new values. Tensor version counters catch optimizer-style in-place updates and
``load_state_dict``, but not writes through ``.data`` (``p.data.mul_(…)``), which share storage
under a fresh version counter.

**What is watched.** :class:`StateTracker` watches *module trees*: the model's, and the loss's
when the loss is an ``nn.Module`` -- as :mod:`landscape.losses`' losses are, their teacher a
registered submodule and their temperature, reduction and scales plain attributes. For every
module in those trees it records

* its class, its children, and its public plain attributes (``bool``, ``int``, ``float``,
  ``str``, ``None``, enums, dtypes, devices, tuples of those; see :func:`module_values`): a
  quantizer's bit width or grid, a switch such as ``calibrating``, BatchNorm's ``eps``, a
  convolution's ``stride``, a loss's ``temperature`` or ``reduction``. ``training`` too, except
  on the model's own modules when the operator sets the model's mode itself (``eval_mode=True``:
  switching the model between ``train()`` and ``eval()`` then changes nothing);
* every parameter and floating-point buffer -- and, in the loss's tree, every public tensor
  attribute too (class weights kept as ``self.w = torch.tensor(…)``, not a buffer): its
  identity, layout and version counter (object, storage pointer, dtype, device, shape, stride,
  ``_version``: catches re-assignment, ``vector_to_parameters``, ``model.to(…)``,
  ``load_state_dict``, any in-place write through autograd) and a copy of its bytes, compared
  exactly on every check (catches every write, through ``.data`` or not, BatchNorm's running
  statistics included).

A loss module's other public attributes -- neither plain nor tensors nor submodules: a list of
teachers, a config object -- are walked by :func:`loss_state` like a loss that is not a module
(below), on every check when the snapshot's walk found anything there, else only when one of
the loss's attributes is re-assigned (:mod:`landscape.losses`' losses hold nothing there: they
are never walked).

When no attribute, child, parameter or buffer of any watched module was re-assigned since the
snapshot (the usual case), the structural part of the check is one identity comparison of the
modules' ``__dict__``, ``_modules``, ``_parameters`` and ``_buffers`` with the snapshot's
(C-level, no ``__eq__`` called); otherwise the values are recomputed and compared, and a
re-assignment to the same value (or of something not watched) is taken as the new reference.

**A loss that is not a module** (a closure, a lambda, a ``functools.partial``, a bound method,
a plain or dataclass object) is walked on every check by :func:`loss_state`, a bounded walk:
the attributes of the loss object and of every object whose class is not a library's (see
:data:`_OPAQUE`: a config object or an ``argparse.Namespace`` a closure reads, wherever its
class is defined), closure cells, default arguments, the globals a function reads, a
partial's function and arguments, a bound method's ``__self__``, the items of small
containers, at most :data:`MAX_DEPTH` references deep. Every module it reaches (a teacher) is
watched as a tree like the model; every tensor and plain value it reaches (a captured
temperature, class weights) is compared too.

*A walk, not a documented* ``H.clear_cache()``, *for such losses* -- chosen by measurement:
the walk of each teacher-holding form the tests pin (closure, default argument, partial, bound
method, partial of a method, module global) takes 6-35 µs on this project's 2-core machine
(under load; ``loss_state`` timed alone), i.e. at most 0.04 % of one Hessian-vector product on
the bench's small CNN (97 ms) and 0.1 % of one on its worst case (31 ms); the whole check with
a closure-held teacher took 0.15x the previous check's time, side by side. Asking users to
refresh by hand would trade that for a silent stale answer whenever they forget. With the walk
entering objects of any non-library class again (as d9cd2c3 did), ``benchmarks/freshness.py
--threads 1`` measured the closure-held teacher's walk at 7.0 µs, 0.003 % of the CNN's product
(check 0.236 ms against 0.215 ms for the same loss as a module). Only losses that are not
modules (or hold lists or objects) pay for it; :mod:`landscape.losses`' are plain modules, so
the analyzers never do.

**Counters** are not settings and are left out: integer buffers named ``num_batches_tracked``
(a train-mode forward increments them; no output depends on them) and any private attribute.
The protocol for a module that counts its calls (``ActQuantPerCall`` restarts its call-site
index at every forward of the model) is to keep the counter private -- ``ActQuantPerCall``
stores it in ``_calls`` behind a ``calls`` property -- while a module whose output depends on
private state exposes a public counter (``version``) that it bumps on every change. Plain
values that the operator's own forward passes change are re-recorded after them
(:meth:`StateTracker.refresh_versions`), so a product never trips the check by itself.

**Not watched** (call ``H.clear_cache()`` after changing them, or build a new operator):
private attributes (names starting with ``_``), attributes set on a class, hooks; public
tensor attributes of the model's modules that are not buffers; values that are neither plain
nor tensors (a callable, a dict, a list) on the model's modules and a loss module's
submodules, with the changes inside them; and anything a loss reaches only beyond the walk's
bounds (objects and functions of the libraries in :data:`_OPAQUE`, more than
:data:`MAX_DEPTH` references deep, containers of more than :data:`MAX_ITEMS` items).

The snapshot costs one copy of the watched tensors; a check reads them and the copy once
(:mod:`~landscape.curvature.exact`: ``memcmp``). That read is the check's floor, and on the
bench's worst case -- a 6.3M-parameter MLP at batch 8, 25 MB of weights against a product that
does little arithmetic -- a single bare read of the weights alone costs about 2 % of a product:
there the 2 % target cannot be met by any check that is exact for writes through ``.data``.
A block product ``H @ V`` (m vectors) runs one check for all m.
"""

from __future__ import annotations

import enum
import functools
import itertools
import operator
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from .exact import copy_of, first_changed, layout

__all__ = ["StateTracker", "loss_state", "module_values"]

MAX_DEPTH = 6
"""How many references deep :func:`loss_state` follows from a loss callable that is not a module."""

MAX_ITEMS = 64
"""Containers (lists, tuples, dicts) with more items than this are not walked into; longer tuples are not plain."""

_ATOMS = (bool, int, float, complex, str, bytes, type(None), enum.Enum, torch.dtype, torch.device, np.generic)
_PLAIN = frozenset({bool, int, float, str, type(None)})  # the common plain types (one set lookup)
_SKIP = object()


# ---------------------------------------------------------------------------- what a loss reaches
_OPAQUE = frozenset({"torch", "numpy", "scipy", "builtins", "functools", "typing", "collections", "abc",
                     "threading", "logging", "pathlib", "os", "sys", "re", "io", "pandas", "sklearn",
                     "transformers", "tokenizers", "landscape"})
"""Top-level packages whose objects and functions :func:`loss_state` does not walk into: their state
is not a loss's (modules and tensors of theirs are still found and watched)."""


def _opaque(obj: Any) -> bool:
    """Whether ``obj`` (a function or a class) comes from a package of :data:`_OPAQUE`."""
    module = getattr(obj, "__module__", None) or ""
    return module.split(".", 1)[0] in _OPAQUE


def _slots(obj: Any) -> list[tuple[str, Any]]:
    """An object's attributes: its ``__dict__`` and its set ``__slots__``."""
    d = getattr(obj, "__dict__", None)
    out = list(d.items()) if isinstance(d, dict) else []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                out.append((name, getattr(obj, name)))
            except Exception:  # noqa: BLE001 - an unset slot, or a descriptor that refuses: nothing to watch
                continue
    return out


@functools.lru_cache(maxsize=256)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the functions, lambdas and comprehensions nested in it) reads as globals."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(dict.fromkeys(names))


def loss_state(loss_fn: Any, model: nn.Module | None = None) -> tuple[
        list[tuple[str, nn.Module]], list[tuple[str, torch.Tensor]], list[tuple[str, Any]]]:
    """What a loss callable reaches besides the model: ``(modules, tensors, values)``.

    A bounded walk from ``loss_fn`` through the attributes (``__dict__``, ``__slots__``,
    dataclass fields) of every object whose class does not come from a library of
    :data:`_OPAQUE` (a config object, an ``argparse.Namespace``, wherever its class is
    defined), closure cells, default arguments and the globals a function reads (functions of
    those libraries excepted), a ``functools.partial``'s function, arguments and keywords, a
    bound method's ``__self__``, the items of lists, tuples and dicts of at most
    :data:`MAX_ITEMS` items; at most :data:`MAX_DEPTH` references deep, each object once, the
    model never. A loss that is itself an ``nn.Module`` is listed and its public attributes that
    are neither plain nor tensors (a list of teachers, a config object) are walked: its tree
    (parameters, buffers, public plain values and tensors) is watched by :class:`StateTracker`.
    Each result is a list of ``(path, object)``, paths such as ``"loss_fn.teacher"`` or
    ``"loss_fn.keywords['temperature']"``: every ``nn.Module`` reached (not walked into: it is
    watched as a tree), every tensor, and every plain value (scalar, string, ``None``, enum,
    dtype, device, a set of those).
    """
    modules: list[tuple[str, nn.Module]] = []
    tensors: list[tuple[str, torch.Tensor]] = []
    values: list[tuple[str, Any]] = []
    seen: set[int] = {id(model)} if model is not None else set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if isinstance(obj, _ATOMS):
            values.append((path, obj))
            return
        if id(obj) in seen or depth > MAX_DEPTH:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            tensors.append((path, obj))
        elif isinstance(obj, nn.Module):
            modules.append((path, obj))
            if depth == 0:  # the loss is a module: what its other public attributes reach is the loss's
                for key, value in list(obj.__dict__.items()):
                    if key[0] != "_" and not isinstance(value, torch.Tensor) and _plain(value) is _SKIP:
                        walk(value, f"{path}.{key}", depth + 1)
        elif isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType)):
            return
        elif isinstance(obj, functools.partial):
            walk(obj.func, f"{path}.func", depth + 1)
            for i, a in enumerate(obj.args):
                walk(a, f"{path}.args[{i}]", depth + 1)
            for k, a in obj.keywords.items():
                walk(a, f"{path}.keywords[{k!r}]", depth + 1)
        elif isinstance(obj, types.MethodType):
            walk(obj.__self__, f"{path}.__self__", depth + 1)
            walk(obj.__func__, path, depth)
        elif isinstance(obj, types.FunctionType):
            if _opaque(obj):
                return
            code = obj.__code__
            for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
                try:
                    content = cell.cell_contents
                except ValueError:  # an empty cell (a name assigned later)
                    continue
                walk(content, f"{path}.{name}", depth + 1)
            for i, a in enumerate(obj.__defaults__ or ()):
                walk(a, f"{path}.__defaults__[{i}]", depth + 1)
            for k, a in (obj.__kwdefaults__ or {}).items():
                walk(a, f"{path}.__kwdefaults__[{k!r}]", depth + 1)
            g = obj.__globals__
            for name in _global_names(code):
                if name in g:
                    walk(g[name], f"{path}.{name}", depth + 1)
        elif isinstance(obj, (list, tuple, dict)):
            if len(obj) <= MAX_ITEMS:
                for k, a in list(obj.items() if isinstance(obj, dict) else enumerate(obj)):
                    walk(a, f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (set, frozenset)):
            if len(obj) <= MAX_ITEMS and all(isinstance(a, _ATOMS) for a in obj):
                values.append((path, frozenset(obj)))
        elif depth == 0 or not _opaque(type(obj)):  # the loss object, or an object of a class not a library's
            for key, value in _slots(obj):
                walk(value, f"{path}.{key}", depth + 1)

    walk(loss_fn, "loss_fn", 0)
    return modules, tensors, values


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (float, complex, np.floating, np.complexfloating)) and a != a and b != b:  # NaN
        return True
    return bool(a == b)


# ---------------------------------------------------------------------------- module trees
def _plain(value: Any) -> Any:
    """``value`` if it is plain (an atom, or a tuple of at most :data:`MAX_ITEMS` atoms), else :data:`_SKIP`."""
    if type(value) in _PLAIN or isinstance(value, _ATOMS):
        return value
    if isinstance(value, tuple) and len(value) <= MAX_ITEMS and all(isinstance(a, _ATOMS) for a in value):
        return value
    return _SKIP


def _attributes(m: nn.Module, modes: bool) -> tuple:
    """``(name, value)`` for each public plain attribute of ``m`` (``training`` only with ``modes``)."""
    out = []
    for key, value in m.__dict__.items():
        if key[0] == "_" or (key == "training" and not modes):
            continue
        if type(value) not in _PLAIN:
            value = _plain(value)
            if value is _SKIP:
                continue
        out.append((key, value))
    return tuple(out)


def module_values(model: nn.Module, modes: bool = True) -> tuple:
    """What a check compares of a module tree besides its tensors: one flat tuple holding, for every
    module (in ``model.modules()`` order), its class and then ``(name, value)`` for each of its
    public plain attributes (``w_bits``, ``zero_point``, ``eps``, ``stride``, ``calibrating``, ...;
    ``training`` only with ``modes=True``). Two states are the same iff their tuples are equal."""
    return tuple(x for m in model.modules() for x in (type(m), *_attributes(m, modes)))


def _tree(roots: list[tuple[str, nn.Module]], modes: bool) -> list[tuple[str, nn.Module, bool, bool]]:
    """``(name, module, modes, loss)`` for every module of the roots' trees, each once: the first root's
    (the model's) with ``modes`` as given and ``loss=False``, the others' (the loss's) always with
    their modes and ``loss=True``."""
    out: list[tuple[str, nn.Module, bool, bool]] = []
    seen: set[int] = set()
    for k, (prefix, root) in enumerate(roots):
        for name, m in root.named_modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append((f"{prefix}.{name}" if name else prefix, m, modes or k > 0, k > 0))
    return out


def _refs(modules: list[nn.Module]) -> list:
    """Everything a module's state is read from, as objects compared by identity: the keys and
    values of its ``__dict__``, children, parameters and buffers."""
    refs: list = []
    for m in modules:
        for d in (m.__dict__, m._modules, m._parameters, m._buffers):
            refs.append(len(d))
            refs.extend(d)
            refs.extend(d.values())
    return refs


def _is_counter(name: str, t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and name.endswith("num_batches_tracked")


def _public_tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """A module's public tensor attributes that are neither parameters nor buffers (``self.w = torch.tensor(…)``)."""
    return [(k, v) for k, v in m.__dict__.items() if k[0] != "_" and isinstance(v, torch.Tensor)]


def _tensors(tree: list[tuple[str, nn.Module, bool, bool]], loose: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for the parameters and non-counter buffers of the tree's modules, the public tensor
    attributes of the loss's modules, and the loose tensors, each tensor once (a loss that holds a
    wrapper of the model shares its tensors)."""
    out: list[tuple[str, torch.Tensor]] = []
    have: set[int] = set()
    named = ((f"{prefix}.{n}", t) for prefix, m, _, loss in tree
             for n, t in [*m._parameters.items(), *m._buffers.items(), *(_public_tensors(m) if loss else ())]
             if t is not None and not _is_counter(n, t))
    for name, t in [*named, *loose]:
        if id(t) not in have:
            have.add(id(t))
            out.append((name, t))
    return out


def _layout(t: torch.Tensor) -> tuple:
    return (id(t), *layout(t))


def _first_written(entries: list[tuple[str, torch.Tensor]], copies: list[torch.Tensor]) -> str | None:
    """Name of the first tensor whose bytes differ from its copy (:mod:`~landscape.curvature.exact`)."""
    i = first_changed([(t, old) for (_, t), old in zip(entries, copies)])
    return None if i is None else entries[i][0]


class StateTracker:
    """Snapshot of what the products depend on besides the vector and the batches; :meth:`changed` says
    whether it moved (see the module: the model's and a loss module's trees, a non-module loss's
    reachable state). ``modes``: whether the model's own train/eval modes count (``eval_mode=False``)."""

    def __init__(self, model: nn.Module, loss_fn: Any = None, modes: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.modes = bool(modes)
        self._walked = loss_fn is not None
        self._always = not isinstance(loss_fn, nn.Module)  # a loss module is walked only when needed
        self.clear()

    def clear(self) -> None:
        """Forget the snapshot."""
        self._roots: list[tuple[str, nn.Module]] = []
        self._loose: list[tuple[str, torch.Tensor]] = []
        self._plain: list[tuple[str, Any]] = []
        self._tree: list[tuple[str, nn.Module, bool, bool]] = []
        self._refs: list = []
        self._module_values: list[tuple] = []
        self._entries: list[tuple[str, torch.Tensor]] = []
        self._layouts: list[tuple] = []
        self._values: list[torch.Tensor] = []
        self._recorded = False

    # ------------------------------------------------------------------ reading the state
    def _loss_now(self) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, torch.Tensor]], list[tuple[str, Any]]]:
        return loss_state(self.loss_fn, self.model) if self._walked else ([], [], [])

    def _record_modules(self, tree: list[tuple[str, nn.Module, bool, bool]]) -> None:
        self._tree = tree
        self._refs = _refs([m for _, m, _, _ in tree])
        self._module_values = [(type(m), _attributes(m, modes)) for _, m, modes, _ in tree]
        self._entries = _tensors(tree, self._loose)

    def _same_structure(self) -> bool:
        refs = _refs([m for _, m, _, _ in self._tree])
        return len(refs) == len(self._refs) and all(map(operator.is_, refs, self._refs))

    def snapshot(self) -> None:
        """Record the current state (call right after building a graph from it)."""
        self._roots, self._loose, self._plain = self._loss_now()
        # a loss module whose public attributes reach nothing beyond its tree (landscape.losses') need not be
        # walked while none of its attributes is re-assigned: the walk would read the same objects
        self._always = not isinstance(self.loss_fn, nn.Module) or len(self._roots) > 1 or bool(self._loose or self._plain)
        self._record_modules(_tree([("model", self.model), *self._roots], self.modes))
        self._layouts = [_layout(t) for _, t in self._entries]
        with torch.no_grad():
            self._values = [copy_of(t) for _, t in self._entries]
        self._recorded = True

    def refresh_versions(self) -> None:
        """Re-record the version counters and the modules' plain values after the operator's own forward
        passes (a train-mode BatchNorm bumps its running statistics' counters, whose values
        :func:`~landscape.curvature.batches.model_mode` restores; a model may count its calls in a
        plain attribute). Called only right after a check found nothing changed and the operator's
        forward passes ran, so nothing the user changed is absorbed."""
        if not self._recorded:
            return
        if not self._same_structure():
            tree = _tree([("model", self.model), *self._roots], self.modes)
            if [id(t) for _, t in _tensors(tree, self._loose)] != [id(t) for _, t in self._entries]:
                return  # a forward pass that replaced a tensor: left for the next check to see
            self._record_modules(tree)
        self._layouts = [_layout(t) for _, t in self._entries]

    # ------------------------------------------------------------------ the check
    def changed(self) -> str | None:
        """``None`` if nothing changed since :meth:`snapshot`, else the name of the first change."""
        if not self._recorded:
            return None
        same = self._same_structure()
        if self._walked and (self._always or not same):
            what = self._loss_changed()
            if what is not None:
                return what
        if not same:
            what = self._modules_changed()
            if what is not None:
                return what
        for (name, t), layout in zip(self._entries, self._layouts):
            if _layout(t) != layout:
                return name
        return _first_written(self._entries, self._values)

    def _loss_changed(self) -> str | None:
        """What a walk of a non-module loss finds different from the snapshot's (modules and tensors by
        identity, plain values by value)."""
        roots, loose, plain = loss_state(self.loss_fn, self.model)
        for now, then, what in ((roots, self._roots, "a module"), (loose, self._loose, "a tensor")):
            if len(now) != len(then):
                return f"the loss's reachable state ({what} more or less)"
            for (name, obj), (_, old) in zip(now, then):
                if obj is not old:
                    return name
        if len(plain) != len(self._plain):
            return "the loss's plain values"
        for (name, value), (old_name, old) in zip(plain, self._plain):
            if name != old_name or not _same_value(value, old):
                return name
        return None

    def _modules_changed(self) -> str | None:
        """Something in a watched module was re-assigned: compare the trees' values and tensors as they
        are now with the snapshot's; if all are the same, take the new structure as the reference."""
        tree = _tree([("model", self.model), *self._roots], self.modes)
        if len(tree) != len(self._tree):
            return "the modules (one added or removed)"
        for (name, m, modes, _), (kind, attrs) in zip(tree, self._module_values):
            if type(m) is not kind:
                return f"{name} (its class)"
            now = _attributes(m, modes)
            if now != attrs:
                for a, b in itertools.zip_longest(now, attrs):
                    if a != b:
                        return f"{name}.{(a or b)[0]}"
        entries = _tensors(tree, self._loose)
        if len(entries) != len(self._entries):
            return "the set of parameters and buffers"
        for (name, t), (old_name, _), layout in zip(entries, self._entries, self._layouts):
            if name != old_name or _layout(t) != layout:
                return name
        self._record_modules(tree)
        return None
