r"""Has the model -- or the loss -- changed since a graph was built? One exact answer, for every kind of change.

A cached first-order graph holds references to the parameters' storage, not copies of their
values: if the values change behind autograd's back, later products silently mix the old
graph with the new values. Tensor version counters catch optimizer-style in-place updates
and ``load_state_dict``, but not writes through ``.data`` (``p.data.mul_(…)``), which share
storage under a fresh version counter.

:class:`StateTracker` therefore keeps, for every parameter and floating-point buffer of the
model and of every ``nn.Module`` reachable from the loss (a distillation teacher, wherever the
loss keeps it -- see :func:`loss_state`), and for every tensor the loss holds outside a module:

* its identity, layout and version counter (the tensor object, storage pointer, dtype,
  device, shape, ``_version``): catches re-assignment (``p.data = t``,
  ``vector_to_parameters``, ``model.to(…)``), replaced modules, ``load_state_dict`` and any
  in-place write through autograd (even one that writes the same values, which would make a
  cached graph raise);
* a snapshot of its values, compared exactly (``torch.equal``) on every check: catches every
  write, through ``.data`` or not, including BatchNorm running statistics.

and, for the loss, the plain values its result depends on: scalar and string attributes (a
KL's ``temperature`` and ``reduction``, dataclass fields, a ``functools.partial``'s keywords, a
closure's captured numbers) and the train/eval mode of every module reachable from it (the
engine puts only the model in eval mode). These are compared by value on every check, and
the loss is walked anew whenever one of the objects walked at the snapshot refers to something
else (:class:`_Structure`), so re-pointing it at another teacher counts too.

and, for the model itself, the class of every submodule and its plain public attributes (see
:func:`module_values`): a quantizer's bit width (``w_bits``, ``bits``) or grid
(``zero_point``), a switch such as ``calibrating``, a BatchNorm's ``eps``, a convolution's
``stride`` or ``padding``, a replaced activation module. Train/eval modes (``training``) are
among them when the operator uses the model's own modes (``eval_mode=False``); with
``eval_mode=True`` the operator sets the mode itself, so switching the model between
``train()`` and ``eval()`` changes nothing and is not a change. When no attribute of any
module was re-assigned since the snapshot (the usual case) this part of the check is two
C-level comparisons of the modules' ``__dict__`` and children with copies (:class:`_ModelValues`).

The snapshot costs one copy of the tracked tensors in memory and one read of them per check;
``make bench`` prints the check's time as a fraction of a Hessian-vector product. Counters
are left out: integer buffers such as BatchNorm's ``num_batches_tracked`` (which a train-mode
forward increments and which no forward output depends on) and the per-call counters of
:data:`COUNTERS` (``ActQuantPerCall.calls``, restarted by a pre-hook at every forward of the
model). Plain values that the operator's own forward passes change are re-recorded after
them (:meth:`StateTracker.refresh_versions`), so a product never trips the check by itself.

Not watched: private attributes (names starting with ``_``), attributes set on a class rather
than on the module, values that are neither plain nor tensors (a callable, a dict, a list),
in-place changes inside a mutable attribute, and hooks. Build a new operator after changing
those.
"""

from __future__ import annotations

import enum
import functools
import itertools
import operator
import types
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["StateTracker", "tracked_modules", "loss_state", "module_values", "COUNTERS"]

MAX_DEPTH = 6
"""How many references deep :func:`loss_state` follows from the loss callable."""

MAX_ITEMS = 64
"""Containers (lists, tuples, dicts) with more items than this are not walked into."""

_ATOMS = (bool, int, float, complex, str, bytes, type(None), enum.Enum, torch.dtype, torch.device, np.generic)
# objects of these libraries are not walked into (their state is not the loss's)
_OPAQUE = frozenset({"torch", "numpy", "scipy", "builtins", "functools", "typing", "collections", "abc",
                     "threading", "logging", "pathlib", "os", "sys", "re", "io"})


COUNTERS = frozenset({"calls"})
"""Attribute names of the model's modules that are counters, not settings: never compared
(``ActQuantPerCall.calls``, the call-site index a forward pass advances and a pre-hook restarts)."""

# plain values by exact type (the common case, one set lookup); others go through isinstance
_PLAIN = frozenset({bool, int, float, str, type(None)})


def _opaque(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.split(".", 1)[0] in _OPAQUE


@functools.lru_cache(maxsize=256)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object (and the functions, lambdas and comprehensions nested in it) reads as globals."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(dict.fromkeys(names))


def _attributes(obj: Any) -> Iterable[tuple[str, Any]]:
    """A loss object's attributes: its ``__dict__`` and its ``__slots__``."""
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        yield from d.items()
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                yield name, getattr(obj, name)
            except Exception:  # noqa: BLE001 - an unset slot, or a descriptor that refuses
                continue


def loss_state(loss_fn: Any, model: nn.Module | None = None, visited: list | None = None) -> tuple[
        list[tuple[str, nn.Module]], list[tuple[str, torch.Tensor]], list[tuple[str, Any]]]:
    """What a loss callable's result depends on besides the model and the batch.

    Walks the references the loss holds -- attributes of loss objects (``vars`` / ``__slots__``
    / dataclass fields), closure cells, default arguments and the globals a function reads, a
    ``functools.partial``'s function, arguments and keywords, a bound method's ``__self__``, and
    the items of small containers -- at most :data:`MAX_DEPTH` references deep, each object once.
    Returns ``(modules, tensors, values)``, each a list of ``(path, object)`` with paths such as
    ``"loss_fn.teacher"`` or ``"loss_fn.keywords['temperature']"``:

    * ``modules``: every ``nn.Module`` reached (the model excepted; not walked into further,
      except for the public attributes of a module that is itself the loss);
    * ``tensors``: every tensor reached outside those modules;
    * ``values``: every scalar, string, ``None``, enum, dtype or device reached, and the plain
      public attributes of every submodule of the modules reached (``training``, a criterion's
      ``reduction`` or ``label_smoothing``).

    Objects of library types (torch, numpy, ...) other than modules and tensors, classes and
    Python modules are not walked into. ``visited``, if given, receives every object walked into
    (for :class:`_Structure`).
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
        if visited is not None:
            visited.append(obj)
        if isinstance(obj, torch.Tensor):
            tensors.append((path, obj))
        elif isinstance(obj, nn.Module):
            modules.append((path, obj))
            for name, m in obj.named_modules():  # modes, and plain settings (a criterion's reduction)
                prefix = f"{path}.{name}" if name else path
                for key, value in vars(m).items():
                    if not key.startswith("_") and isinstance(value, _ATOMS):
                        values.append((f"{prefix}.{key}", value))
            if depth == 0:  # the loss itself is a module: what its public attributes reach is the loss's
                for key, value in list(vars(obj).items()):
                    if not key.startswith("_") and not isinstance(value, _ATOMS):
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
            if len(obj) > MAX_ITEMS:
                return
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            for k, a in list(items):
                walk(a, f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (set, frozenset)):
            if len(obj) <= MAX_ITEMS and all(isinstance(a, _ATOMS) for a in obj):
                values.append((path, frozenset(obj)))
        elif _opaque(type(obj)):
            return
        else:  # a loss object (a dataclass's fields are its attributes)
            for key, value in list(_attributes(obj)):
                walk(value, f"{path}.{key}", depth + 1)

    walk(loss_fn, "loss_fn", 0)
    return modules, tensors, values


def tracked_modules(model: nn.Module, loss_fn: Any) -> list[tuple[str, nn.Module]]:
    """The model and every ``nn.Module`` reachable from the loss (see :func:`loss_state`): a teacher held as an
    attribute, captured by a closure or a lambda's default argument, bound into a ``functools.partial``, or
    the ``__self__`` of a bound method. Submodules of a module already listed are left out."""
    return _distinct_modules(model, loss_state(loss_fn, model)[0])


def _distinct_modules(model: nn.Module, found: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    out = [("model", model)]
    if not found:
        return out
    inner = {id(m) for m in model.modules()}
    for _, top in found:
        inner.update(id(m) for m in top.modules() if m is not top)
    for name, m in found:
        if id(m) not in inner:
            out.append((name, m))
            inner.add(id(m))
    return out


def _plain_value(value: Any) -> Any:
    """``value`` if it is plain (an atom, or a tuple of at most :data:`MAX_ITEMS` atoms), else :data:`_SKIP`.
    Plain values are immutable: the same object always has the same value."""
    if type(value) in _PLAIN or isinstance(value, _ATOMS):
        return value
    if isinstance(value, tuple) and len(value) <= MAX_ITEMS and (
            _PLAIN.issuperset(map(type, value)) or all(isinstance(a, _ATOMS) for a in value)):
        return value
    return _SKIP


_SKIP = object()


def _walk(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())`` (same order: depth-first, each module once), without building names."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    stack = [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        children = [c for c in m._modules.values() if c is not None]
        children.reverse()
        stack.extend(children)
    return out


def module_values(model: nn.Module, modes: bool = True, modules: list[nn.Module] | None = None) -> tuple:
    """What a check compares of the model besides its tensors: one flat tuple holding, for every module
    (in ``model.modules()`` order), its class and then ``(name, value)`` for each of its plain public
    attributes (``bool``, ``int``, ``float``, ``str``, ``None``, enums, dtypes, devices, and tuples of
    at most :data:`MAX_ITEMS` of those): ``w_bits``, ``zero_point``, ``eps``, ``stride``,
    ``calibrating``, ...

    ``training`` is included only with ``modes=True``; the names in :data:`COUNTERS` never are. Two
    states are the same iff their tuples are equal (``==``).
    """
    skip = COUNTERS if modes else COUNTERS | {"training"}
    out: list[Any] = []
    append = out.append
    for m in _walk(model) if modules is None else modules:
        append(type(m))
        for key, value in m.__dict__.items():
            if key[0] == "_" or key in skip:
                continue
            if type(value) not in _PLAIN:
                value = _plain_value(value)
                if value is _SKIP:
                    continue
            append((key, value))
    return tuple(out)


def _first_difference(model: nn.Module, modes: bool, old: tuple) -> str:
    """A name for the first difference between the model's values now and ``old`` (for the message)."""
    new = module_values(model, modes)
    names = [name for name, _ in model.named_modules()]
    k = -1
    for a, b in itertools.zip_longest(new, old, fillvalue=_SKIP):
        if isinstance(a, type):
            k += 1
        if type(a) is not type(b) or a != b:
            where = f"model.{names[k]}" if 0 <= k < len(names) and names[k] else "model"
            if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
                return f"{where}.{a[0]}"
            return f"{where} (its modules or their attributes)"
    return "model"


class _ModelValues:
    """The model's :func:`module_values`, with a fast path for the check.

    Besides the values it keeps the modules and a shallow copy of each one's ``__dict__`` and
    of its children (``_modules``). When every module's ``__dict__`` and children still equal
    those copies (two C-level comparisons of lists of dicts; the objects are the same, so
    ``==`` is an identity test for all but re-assigned values), the module tree is the same and
    so are the values: nothing else is looked at. Anything else (a value re-assigned, a module
    added) falls back to comparing :func:`module_values`; if that finds no difference (the
    change was to something not watched: a private attribute, ``training`` under
    ``eval_mode=True``, a counter), the copies are re-recorded.
    """

    def __init__(self, model: nn.Module, modes: bool):
        self.model = model
        self.modes = modes
        self.record()

    def record(self, modules: list[nn.Module] | None = None) -> None:
        modules = _walk(self.model) if modules is None else modules
        self.values = module_values(self.model, self.modes, modules)
        self.modules = modules
        self.dicts = [dict(m.__dict__) for m in modules]
        self.children = [dict(m._modules) for m in modules]

    def _same(self) -> bool:
        modules = self.modules
        try:
            return ([m._modules for m in modules] == self.children
                    and [m.__dict__ for m in modules] == self.dicts)
        except Exception:  # noqa: BLE001 - a re-assigned value whose == raises (a tensor): look closer
            return False

    def absorb(self) -> None:
        """Take the values as they are now as the reference (after the operator's own forward passes)."""
        if not self._same():
            self.record()

    def changed(self) -> str | None:
        """``None`` if the model's values are those recorded, else where they first differ."""
        if self._same():
            return None
        modules = _walk(self.model)
        if module_values(self.model, self.modes, modules) != self.values:
            return _first_difference(self.model, self.modes, self.values)
        self.record(modules)
        return None


def _is_counter(name: str, t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex()) and name.endswith("num_batches_tracked")


def _entries(modules: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for the parameters and non-counter buffers of the modules, each tensor once
    (a loss that holds a wrapper of the model and the teacher shares the model's tensors)."""
    out: list[tuple[str, torch.Tensor]] = []
    have: set[int] = set()
    for prefix, m in modules:
        tensors = itertools.chain(m.named_parameters(), ((n, b) for n, b in m.named_buffers() if not _is_counter(n, b)))
        for name, t in tensors:
            if id(t) not in have:
                have.add(id(t))
                out.append((f"{prefix}.{name}", t))
    return out


def _values_changed(current: list[tuple[str, torch.Tensor]], saved: list[torch.Tensor]) -> str | None:
    """Name of the first tensor whose values differ from its snapshot (exact comparison).

    CPU tensors are compared through NumPy (a memcmp-speed scan, free of the thread-pool
    latency of small torch ops); others with one device reduction per tensor and a single
    synchronisation for all of them.
    """
    other = []
    with torch.no_grad():
        for (name, t), old in zip(current, saved):
            if t.device.type == "cpu" and t.dtype not in (torch.bfloat16,) and not t.is_complex():
                try:
                    if not np.array_equal(t.detach().numpy(), old.numpy()):
                        return name
                    continue
                except (TypeError, RuntimeError):
                    pass
            other.append((name, t, old))
        if other:
            flags = torch.stack([torch.ne(t, old).any() for _, t, old in other])
            if bool(flags.any()):
                return other[int(flags.nonzero()[0, 0])][0]
    return None


def _layout(t: torch.Tensor) -> tuple:
    ptr = t.data_ptr() if t.device.type != "meta" else 0
    return (id(t), ptr, t._version, t.dtype, t.device, tuple(t.shape), t.stride())


def _flat(d: dict, refs: list, sizes: list) -> None:
    sizes.append(len(d))
    refs.extend(d)
    refs.extend(d.values())


def _read(obj: Any, refs: list, sizes: list, walked: bool = True) -> None:
    """Append to ``refs`` everything :func:`loss_state` (if ``walked``) and :func:`_entries` read of ``obj``
    itself (not of the objects it refers to, which are listed on their own), and to ``sizes`` the
    sizes of its containers."""
    refs.append(type(obj))
    if isinstance(obj, nn.Module):
        if walked:  # the walk reads a reached module's plain attributes (and the loss module's others)
            _flat(obj.__dict__, refs, sizes)
        _flat(obj._modules, refs, sizes)
        _flat(obj._parameters, refs, sizes)
        _flat(obj._buffers, refs, sizes)
    elif isinstance(obj, (torch.Tensor, tuple, type, types.ModuleType, types.MethodType,
                          types.BuiltinFunctionType, types.BuiltinMethodType)):
        return  # immutable, or (a tensor) checked by layout and value
    elif isinstance(obj, functools.partial):
        refs.extend((obj.func, obj.args))
        _flat(obj.keywords, refs, sizes)
    elif isinstance(obj, types.FunctionType):
        code = obj.__code__
        refs.extend((obj.__module__, code, obj.__defaults__))
        for cell in obj.__closure__ or ():
            try:
                refs.append(cell.cell_contents)
            except ValueError:  # an empty cell
                refs.append(_SKIP)
        _flat(obj.__kwdefaults__ or {}, refs, sizes)
        g = obj.__globals__
        refs.extend(g.get(name, _SKIP) for name in _global_names(code))
    elif isinstance(obj, (list, set, frozenset)):
        sizes.append(len(obj))
        refs.extend(obj)
    elif isinstance(obj, dict):
        _flat(obj, refs, sizes)
    elif not _opaque(type(obj)):
        for key, value in _attributes(obj):
            refs.append(key)
            refs.append(value)


class _Structure:
    """What the loss walk and the lists of parameters and buffers were computed from, so a check can
    reuse them instead of walking again.

    At :meth:`StateTracker.snapshot` the objects walked into (the loss's objects, closures,
    containers, every submodule of the modules it reaches) and the model's modules are listed
    once. A check re-reads only those objects' own references (:func:`_read`: their
    ``__dict__``, slots, cells, items, children, parameters and buffers) and compares them with
    the snapshot's by identity (C-level, no ``__eq__`` called). If all are the same objects, the
    walk would find exactly what it found at the snapshot, so its result is reused; otherwise
    (anything re-assigned, even to an equal value) the check walks anew and compares as before.
    """

    def __init__(self, objects: list, tree: list[nn.Module], counters: list[torch.Tensor]):
        self.objects = objects  # walked by loss_state
        self.tree = tree  # the model's other modules (only their children, parameters and buffers are read)
        self.counters = counters  # integer buffers left out of the tensors: still integer?
        self.refs, self.sizes = self.read()

    def read(self) -> tuple[list, list[int]]:
        refs: list = []
        sizes: list[int] = []
        for obj in self.objects:
            _read(obj, refs, sizes)
        for m in self.tree:
            _read(m, refs, sizes, walked=False)
        return refs, sizes

    def same(self) -> bool:
        if any(t.is_floating_point() or t.is_complex() for t in self.counters):
            return False
        refs, sizes = self.read()
        return sizes == self.sizes and len(refs) == len(self.refs) and all(map(operator.is_, refs, self.refs))


class StateTracker:
    """Snapshot of what the products depend on besides the vector and the batches; :meth:`changed` says
    whether it moved.

    Tracked: the parameters and (non-counter) buffers of ``model`` and of every module reachable
    from ``loss_fn``, the tensors the loss holds outside modules, the loss's plain values (see
    :func:`loss_state`) and the model's modules' classes and plain attributes (see
    :func:`module_values`; their train/eval modes too if ``modes``, i.e. when the operator runs the
    model in its own modes, ``eval_mode=False``). The loss is walked again on a check only when
    one of the objects walked at the snapshot now refers to something else (:class:`_Structure`).
    """

    def __init__(self, model: nn.Module, loss_fn: Any = None, modes: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.modes = bool(modes)
        self._names: list[str] = []
        self._layouts: list[tuple] = []
        self._values: list[torch.Tensor] = []
        self._plain: list[tuple[str, Any]] = []
        self._model_values: _ModelValues | None = None
        self._entries: list[tuple[str, torch.Tensor]] = []
        self._structure: _Structure | None = None

    @property
    def modules(self) -> list[tuple[str, nn.Module]]:
        """The model and the modules reachable from the loss, as they are now."""
        return tracked_modules(self.model, self.loss_fn)

    def _current(self, visited: list | None = None) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, Any]]]:
        """Walk the loss and list the tracked tensors, as they are now (``visited``: see :func:`loss_state`;
        the reached modules' submodules are added to it)."""
        if self.loss_fn is None:
            mods = [("model", self.model)]
            plain: list[tuple[str, Any]] = []
            loose: list[tuple[str, torch.Tensor]] = []
        else:
            found, loose, plain = loss_state(self.loss_fn, self.model, visited)
            mods = _distinct_modules(self.model, found)
            if visited is not None:
                visited.extend(m for _, top in found for m in top.modules())
        entries = _entries(mods)
        if loose:
            have = {id(t) for _, t in entries}
            for name, t in loose:
                if id(t) not in have:
                    have.add(id(t))
                    entries.append((name, t))
        return entries, plain

    def _now(self) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, Any]]]:
        """:meth:`_current`, without walking when the structure is the snapshot's."""
        if self._structure is not None and self._structure.same():
            return self._entries, self._plain
        return self._current()

    def snapshot(self) -> None:
        """Record the current state (call right after building a graph from it)."""
        visited: list = []
        entries, plain = self._current(visited)
        self._entries = entries
        self._names = [n for n, _ in entries]
        self._layouts = [_layout(t) for _, t in entries]
        self._plain = plain
        self._model_values = _ModelValues(self.model, self.modes)
        walked = list({id(o): o for o in visited}.values())
        tree = [m for m in _walk(self.model) if id(m) not in {id(o) for o in walked}]
        counters = [b for m in [*walked, *tree] if isinstance(m, nn.Module)
                    for n, b in m.named_buffers(recurse=False) if _is_counter(n, b)]
        self._structure = _Structure(walked, tree, counters)
        with torch.no_grad():
            self._values = [t.detach().clone() for _, t in entries]

    def refresh_versions(self) -> None:
        """Re-record the version counters and the model's plain values after the operator's own forward
        passes (a train-mode BatchNorm bumps its running statistics' counters, whose values
        :func:`~landscape.curvature.batches.model_mode` restores; a model may count its calls in a
        plain attribute). Called only right after a check found nothing changed and the operator's
        forward passes ran, so nothing the user changed is absorbed."""
        entries, _ = self._now()
        if len(entries) == len(self._layouts):
            self._layouts = [_layout(t) for _, t in entries]
        if self._model_values is not None:
            self._model_values.absorb()

    def clear(self) -> None:
        """Forget the snapshot."""
        self._names, self._layouts, self._values, self._plain, self._entries = [], [], [], [], []
        self._model_values = None
        self._structure = None

    def changed(self) -> str | None:
        """``None`` if nothing changed since :meth:`snapshot`, else the name of the first change."""
        if self._model_values is not None:
            what = self._model_values.changed()
            if what is not None:
                return what
        entries, plain = self._now()
        if len(plain) != len(self._plain):
            return "the loss's attributes"
        for (name, value), (old_name, old) in zip(plain, self._plain):
            if name != old_name or not _same_value(value, old):
                return name
        if len(entries) != len(self._names):
            return "the set of parameters and buffers"
        for (name, t), old_name, layout in zip(entries, self._names, self._layouts):
            if name != old_name or _layout(t) != layout:
                return name
        return _values_changed(entries, self._values)


def _same_value(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (float, complex, np.floating, np.complexfloating)) and a != a and b != b:  # NaN
        return True
    return bool(a == b)
