"""Small statistics for metric tables: tie-aware ranks, Spearman correlation, mean with a CI.

* `average_ranks` — ranks 1..n per row, tied values sharing the mean of their ranks (the ranks of
  ``scipy.stats.rankdata(method="average")``). Used by `mask_auroc` (Mann–Whitney U) and `spearman`.
* `spearman` — Spearman's rho per row: Pearson correlation of the average ranks.
* `mean_ci` — the mean of per-image values with a confidence interval, by Student's t (default) or a
  seeded percentile bootstrap, for "method A: 0.41 [0.37, 0.45] (n=40)" rows of a comparison table.
  It returns a `MeanCI`: a ``(mean, lo, hi)`` tuple that also says how many values it used
  (``n``) and how many NaN it left out (``n_dropped``) — a value is never dropped uncounted.

No SciPy: the t quantile is found by bisection on the t CDF, itself integrated numerically
(Simpson's rule), accurate to ~1e-9 for any degrees of freedom >= 1.

Example:
    >>> average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
    tensor([[3.5000, 1.0000, 3.5000, 2.0000]], dtype=torch.float64)
    >>> mean, lo, hi = mean_ci(torch.tensor([0.2, 0.4, 0.6]))
    >>> round(mean, 3), round(lo, 3), round(hi, 3)
    (0.4, -0.097, 0.897)
    >>> result = mean_ci([0.2, 0.4, float("nan")])
    >>> result.n, result.n_dropped
    (2, 1)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor


def average_ranks(values: Float[Tensor, "batch n"]) -> Float[Tensor, "batch n"]:
    """Ranks ``1..n`` within each row; tied values get the average of the ranks they span.

    Args:
        values: Any real tensor ``[batch, n]`` without NaN.

    Returns:
        float64 ranks, same shape. A constant row is all ``(n + 1) / 2``.

    Example:
        >>> average_ranks(torch.tensor([[0.0, 0.0, 1.0]]))
        tensor([[1.5000, 1.5000, 3.0000]], dtype=torch.float64)
    """
    if values.ndim != 2:
        raise ValueError(f"values must be [batch, n], got shape {tuple(values.shape)}")
    if torch.isnan(values).any():
        raise ValueError("values contain NaN: ranks are undefined")
    batch, n = values.shape
    if n == 0:
        return values.new_zeros(batch, 0, dtype=torch.float64)
    sorted_values, order = values.sort(dim=-1, stable=True)
    new_group = torch.ones_like(sorted_values, dtype=torch.bool)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    # Tie groups numbered across the whole batch, so one scatter handles every row.
    group = new_group.flatten().cumsum(0).view(batch, n) - 1
    position = torch.arange(n, device=values.device).expand(batch, n).flatten().double()
    n_groups = int(group.max()) + 1
    first = torch.full((n_groups,), float("inf"), dtype=torch.float64, device=values.device)
    last = torch.full((n_groups,), -1.0, dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(0, group.flatten(), position, reduce="amin")
    last = last.scatter_reduce(0, group.flatten(), position, reduce="amax")
    sorted_ranks = ((first + last) / 2 + 1)[group]
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def _rows(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"expected two [batch, ...] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.flatten(1), b.flatten(1)


def pearson(a: Float[Tensor, "batch *n"], b: Float[Tensor, "batch *n"]) -> Float[Tensor, " batch"]:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (trailing axes flattened).

    A row where either input is constant has no variance: NaN.

    Example:
        >>> pearson(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 6.0]]))
        tensor([1.], dtype=torch.float64)
    """
    a, b = _rows(a, b)
    a = a.double() - a.double().mean(dim=-1, keepdim=True)
    b = b.double() - b.double().mean(dim=-1, keepdim=True)
    denom = (a.square().sum(-1) * b.square().sum(-1)).sqrt()
    return torch.where(denom > 0, (a * b).sum(-1) / denom, torch.full_like(denom, float("nan")))


def spearman(a: Float[Tensor, "batch *n"], b: Float[Tensor, "batch *n"]) -> Float[Tensor, " batch"]:
    """Spearman's rank correlation of each row of ``a`` with the same row of ``b`` (trailing axes flattened).

    Ties get average ranks. A row where either input is constant has no rank variance: NaN.

    Example:
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    a, b = _rows(a, b)
    return pearson(average_ranks(a), average_ranks(b))


def _t_cdf(t: float, df: float) -> float:
    """Student's t CDF at ``t >= 0``: 1/2 plus Simpson's rule on the density over ``[0, t]``."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, t, 4001)
    pdf = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = t / 4000
    return 0.5 + h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum())


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (``0.5 <= p < 1``) of Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(0.975, 10), 4)
        2.2281
    """
    if not 0.5 <= p < 1 or df <= 0:
        raise ValueError(f"need 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


class MeanCI(tuple):
    """``(mean, lo, hi)`` of `mean_ci`, with the counts behind it.

    Unpacks and compares like the plain 3-tuple earlier versions returned; also has the attributes
    ``mean``, ``lo``, ``hi``, ``n`` (values used) and ``n_dropped`` (NaN values left out), and
    `format` for a table cell.

    Example:
        >>> r = MeanCI(0.5, 0.4, 0.6, n=10, n_dropped=2)
        >>> r.format(2), tuple(r)
        ('0.50 [0.40, 0.60] (n=10, 2 NaN dropped)', (0.5, 0.4, 0.6))
    """

    n: int
    n_dropped: int

    def __new__(cls, mean: float, lo: float, hi: float, *, n: int, n_dropped: int = 0) -> "MeanCI":
        obj = super().__new__(cls, (mean, lo, hi))
        obj.n, obj.n_dropped = int(n), int(n_dropped)
        return obj

    def __getnewargs_ex__(self) -> tuple[tuple, dict]:  # pickling and copying keep the counts
        return tuple(self), {"n": self.n, "n_dropped": self.n_dropped}

    @property
    def mean(self) -> float:
        return self[0]

    @property
    def lo(self) -> float:
        return self[1]

    @property
    def hi(self) -> float:
        return self[2]

    def as_dict(self) -> dict[str, float | int]:
        """``{"mean", "lo", "hi", "n", "n_dropped"}``."""
        return {"mean": self[0], "lo": self[1], "hi": self[2], "n": self.n, "n_dropped": self.n_dropped}

    def format(self, digits: int = 3) -> str:
        """``"mean [lo, hi] (n=N)"``, with ``", K NaN dropped"`` when K > 0."""
        dropped = f", {self.n_dropped} NaN dropped" if self.n_dropped else ""
        return f"{self[0]:.{digits}f} [{self[1]:.{digits}f}, {self[2]:.{digits}f}] (n={self.n}{dropped})"

    def __repr__(self) -> str:
        return f"MeanCI(mean={self[0]!r}, lo={self[1]!r}, hi={self[2]!r}, n={self.n}, n_dropped={self.n_dropped})"


def mean_ci(
    values: Any,
    level: float = 0.95,
    method: Literal["t", "bootstrap"] = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> MeanCI:
    """Mean of per-image values and a two-sided confidence interval: ``(mean, lo, hi)``, counted.

    NaN values (e.g. images whose mask is empty) are left out first, and counted: the result is a
    `MeanCI`, a ``(mean, lo, hi)`` tuple with ``.n`` (values used) and ``.n_dropped`` (NaN left out).

    * ``"t"`` — ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)`` (sd with ``n - 1``).
    * ``"bootstrap"`` — percentile interval of ``n_boot`` resampled means (seeded, reproducible).

    With a single value the interval is ``(mean, mean)`` for the bootstrap and NaN for ``"t"``.

    Args:
        values: 1-d tensor, array or sequence of numbers.
        level: Coverage, in (0, 1).
        method: ``"t"`` or ``"bootstrap"``.
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Raises:
        ValueError: no finite value, a bad level or method.

    Example:
        >>> mean_ci([1.0, 2.0, 3.0, 4.0], method="bootstrap")[0]
        2.5
    """
    x = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()
    n_all = x.numel()
    x = x[~torch.isnan(x)]
    if x.numel() == 0:
        raise ValueError(f"mean_ci needs at least one value that is not NaN (got {n_all}, all NaN)")
    dropped = n_all - x.numel()
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n, mean = x.numel(), float(x.mean())
    if method == "t":
        if n < 2:
            return MeanCI(mean, float("nan"), float("nan"), n=n, n_dropped=dropped)
        half = t_quantile((1 + level) / 2, n - 1) * float(x.std(unbiased=True)) / math.sqrt(n)
        return MeanCI(mean, mean - half, mean + half, n=n, n_dropped=dropped)
    if method == "bootstrap":
        gen = torch.Generator().manual_seed(seed)
        means = x[torch.randint(n, (n_boot, n), generator=gen)].mean(dim=1)
        lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
        return MeanCI(mean, float(lo), float(hi), n=n, n_dropped=dropped)
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
