"""A typechecker for jaxtyping that checks array shapes and dtypes only (the test session uses it).

``pytest --jaxtyping-packages=caap_lens,shape_check.check_shapes`` (set in pyproject.toml, with tests/ on the path)
makes every function of the package check, at each call, that tensors passed to or returned from it
match the ``Float[Tensor, "batch grid_h grid_w"]``-style annotations its signature promises, with
axis names bound consistently across the call. Other annotations are left to the functions' own
validation, which gives users the clearer error (``batch_size must be a positive int, got '8'``), so
a full typechecker such as beartype would test the wrong thing there.

Example:
    >>> import torch
    >>> from jaxtyping import Float, jaxtyped
    >>> @jaxtyped(typechecker=check_shapes)
    ... def first_row(x: Float[torch.Tensor, "rows cols"]) -> Float[torch.Tensor, " cols"]:
    ...     return x[0]
    >>> first_row(torch.zeros(2, 3)).shape
    torch.Size([3])
    >>> first_row(torch.zeros(2, 3, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxtyping.TypeCheckError: Type-check error whilst checking the parameters of ...first_row...
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable

from jaxtyping import AbstractArray
from torch import Tensor


def _is_array_type(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, AbstractArray)


def _mismatch(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not match the array parts of ``hint``, or None if it does (or they do not apply)."""
    if _is_array_type(hint):
        if not isinstance(value, Tensor) or isinstance(value, hint):
            return None
        return f"is a {value.dtype} tensor of shape {tuple(value.shape)}, expected {hint.__name__}"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        arrays = [h for h in members if _is_array_type(h)]
        if not arrays or not isinstance(value, Tensor) or any(isinstance(value, h) for h in arrays):
            return None
        if any(h is Any or (isinstance(h, type) and not _is_array_type(h) and isinstance(value, h)) for h in members):
            return None  # another member (``Any``, plain ``Tensor``) takes the tensor as it is
        return f"is a {value.dtype} tensor of shape {tuple(value.shape)}, expected {' or '.join(h.__name__ for h in arrays)}"
    if origin is tuple and isinstance(value, tuple):
        args = typing.get_args(hint)
        if len(args) == len(value) and Ellipsis not in args:
            for i, (item, item_hint) in enumerate(zip(value, args)):
                why = _mismatch(item, item_hint)
                if why is not None:
                    return f"[{i}] {why}"
    return None


def _checks_anything(hint: Any) -> bool:
    if _is_array_type(hint):
        return True
    return any(_checks_anything(h) for h in typing.get_args(hint))


def check_shapes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``fn`` (with resolved annotations) to check its array-annotated arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    checked = {n: p.annotation for n, p in signature.parameters.items() if _checks_anything(p.annotation)}
    if not checked:
        return fn

    @functools.wraps(fn)
    def with_checks(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, hint in checked.items():
            if name in bound.arguments:
                why = _mismatch(bound.arguments[name], hint)
                if why is not None:
                    shown = "the return value" if name.startswith("_jaxtyping") or name == "return" else name
                    raise TypeError(f"{fn.__name__}: {shown} {why}")
        return fn(*args, **kwargs)

    return with_checks
