"""A strict stand-in for CuPy, for machines without it: numpy underneath, CuPy's refusals on top.

CuPy arrays do not turn into numpy arrays implicitly (``np.asarray`` of one raises), and
CuPy's functions and operators refuse numpy array operands. Code written against an array
namespace (``xp``) that mixes the two works on numpy alone and fails on a GPU; with this
module installed as ``cupy`` (:func:`install`) it fails here too. Numbers are numpy's, so
results must equal the numpy path's exactly.

Not modelled: CuPy's own dtype promotion corners, and whether the installed CuPy has every
function numpy has.
"""

from __future__ import annotations

import operator
import sys
import types
from typing import Any

import numpy as np


def _refuse(x: Any) -> None:
    raise TypeError(f"Unsupported type {type(x)!r}: a numpy array where CuPy wants a CuPy array.")


def _unwrap(x: Any) -> Any:
    """Operands as numpy for the computation: CuPy arrays unwrapped, numpy arrays refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0:
        _refuse(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _index(idx: Any) -> Any:
    """An index: CuPy accepts numpy index arrays too."""
    if isinstance(idx, tuple):
        return tuple(_index(i) for i in idx)
    return idx._a if isinstance(idx, ndarray) else idx


def _wrap(x: Any) -> Any:
    """Results as CuPy returns them: arrays (reductions give 0-d arrays, not scalars)."""
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _function(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return _wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    return call


class ndarray:  # noqa: N801 - CuPy's name
    """A CuPy array: a numpy array that refuses implicit conversion and numpy operands."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
        )

    __array_ufunc__ = None  # numpy's ufuncs and operators give way to (and then fail in) ours

    def get(self) -> np.ndarray:
        return self._a.copy()

    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, idx: Any) -> "ndarray":
        return ndarray(np.asarray(self._a[_index(idx)]))

    def __setitem__(self, idx: Any, value: Any) -> None:
        self._a[_index(idx)] = _unwrap(value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__ & co.: numpy must not see through
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _function(attr) if callable(attr) else _wrap(attr)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __repr__(self) -> str:
        return f"strict_cupy.ndarray({self._a!r})"


def _binary(op: Any, reflected: bool = False) -> Any:
    def method(self: ndarray, other: Any) -> Any:
        other = _unwrap(other)
        return _wrap(op(other, self._a) if reflected else op(self._a, other))

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _binary(_op))
    setattr(ndarray, f"__r{_name}__", _binary(_op, reflected=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _binary(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: ndarray(op(self._a)))(getattr(operator, _name)))
ndarray.__module__ = "cupy"  # engine.metrics.xp_of recognises CuPy arrays by their module


class _Ufunc:
    """A numpy ufunc with its methods (``reduceat``...) taking and giving CuPy arrays."""

    def __init__(self, ufunc: np.ufunc) -> None:
        self._u = ufunc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _function(self._u)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return _function(getattr(self._u, name))


def _asarray(x: Any, dtype: Any = None) -> ndarray:
    """The explicit transfer: numpy arrays, lists and device arrays (``copy_to_host``) in."""
    if isinstance(x, ndarray):
        return x if dtype is None else ndarray(x._a.astype(dtype, copy=False))
    if hasattr(x, "copy_to_host"):  # a Numba device array (the simulator's too)
        x = x.copy_to_host()
    return ndarray(np.array(x, dtype=dtype))


def _asnumpy(x: Any) -> np.ndarray:
    return x._a.copy() if isinstance(x, ndarray) else np.asarray(x)


def _module_getattr(name: str) -> Any:
    attr = getattr(np, name)
    if isinstance(attr, np.ufunc):
        return _Ufunc(attr)
    if isinstance(attr, type) or not callable(attr):
        return attr  # dtypes, constants
    return _function(attr)


def module() -> types.ModuleType:
    """A fresh ``cupy`` module object."""
    mod = types.ModuleType("cupy")
    mod.ndarray = ndarray
    mod.asarray = mod.array = _asarray
    mod.asnumpy = _asnumpy
    mod.__getattr__ = _module_getattr
    return mod


def install(monkeypatch: Any) -> types.ModuleType:
    """Make ``import cupy`` give this stand-in for the rest of a test."""
    mod = module()
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod
