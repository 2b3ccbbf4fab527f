"""Sweeps (`caap_lens.sweeps`): every map of a sweep equals the `caap` call it stands for, the helpers
place and find windows, and a full window sweep really shares work between windows with one start."""

from __future__ import annotations

import math

import pytest
import torch

from caap_lens.attribution.engine import caap
from caap_lens.attribution.scores import logit_diff
from caap_lens.sweeps import all_windows, context_sweep, depth_profile, score_sweep, window_sweep
from conftest import images_for, tiny_vit


def _build(depth: int):
    return tiny_vit(seed=7 + depth, depth=depth, img_size=64)


@pytest.fixture
def vit():
    return _build(4)


def test_all_windows_is_every_pair():
    for n in (1, 4, 12):
        windows = all_windows(n)
        expected = {(a, b) for a in range(n + 1) for b in range(n + 1) if 0 <= a < b <= n}
        assert set(windows) == expected and len(windows) == len(expected) == n * (n + 1) // 2
        assert windows == sorted(windows)


def test_window_sweep_all_equals_caap_per_window(vit):
    x = images_for(vit, 2, seed=1)
    sweep = window_sweep(vit, x, [3, 8], batch_size=7)
    n = vit.cfg.n_layers
    assert sweep.windows == [(a, b) for a in range(n) for b in range(a + 1, n + 1)]
    assert sweep.maps.shape == (len(sweep.windows), 2, *vit.grid.grid_size)
    assert sweep.context_score.shape == (len(sweep.windows), 2)
    assert sweep.targets.tolist() == [3, 8]
    worst = 0.0
    for i, (a, b) in enumerate(sweep.windows):
        alone = caap(vit, x, [3, 8], layers=(a, b))
        worst = max(worst, (sweep.maps[i] - alone.map).abs().max().item())
        assert torch.allclose(sweep.context_score[i], alone.context_score, atol=1e-6)
        assert torch.allclose(sweep.source_score, alone.source_score, atol=1e-6)
        assert torch.equal(sweep.map_for(a, b), sweep.maps[i])
    print(f"[max abs diff] window_sweep vs caap per window {worst:.3e}")
    assert worst < 1e-5
    # The windows really differ (a sweep returning one map repeated would fail here).
    assert (sweep.map_for(0, 1) - sweep.map_for(0, n)).abs().max() > 1e-3


def test_window_sweep_given_windows_with_other_settings(vit):
    x = images_for(vit, 2, seed=2)
    windows = [(1, 4), (0, 2), (1, 2), (2, 3)]  # unsorted, shared and distinct starts
    kwargs = dict(context="noise", hook="mlp_out", score="margin", relative=True, batch_size=5)
    sweep = window_sweep(vit, x, [0, 6], windows, **kwargs)
    assert sweep.windows == windows
    assert sweep.settings["score"] == "margin" and sweep.settings["hook"] == "mlp_out"
    worst = 0.0
    for i, window in enumerate(windows):
        worst = max(worst, (sweep.maps[i] - caap(vit, x, [0, 6], layers=window, **kwargs).map).abs().max().item())
    print(f"[max abs diff] window_sweep (given windows, relative margin) vs caap {worst:.3e}")
    assert worst < 1e-5
    # Lists instead of tuples are accepted and found by map_for.
    listed = window_sweep(vit, x, [0, 6], [[1, 2]], **kwargs)
    assert listed.windows == [(1, 2)]
    assert torch.allclose(listed.map_for(1, 2), sweep.map_for(1, 2), atol=1e-6)


def test_window_sweep_per_head(vit):
    x = images_for(vit, 1, seed=3)
    sweep = window_sweep(vit, x, [4], [(1, 2), (1, 3)], heads=True)
    assert sweep.maps.shape == (2, 1, vit.cfg.n_heads, *vit.grid.grid_size)
    for i, window in enumerate(sweep.windows):
        assert torch.allclose(sweep.maps[i], caap(vit, x, [4], layers=window, heads=True).map, atol=1e-5)


def test_depth_profile_equals_single_layer_caap(vit):
    x = images_for(vit, 2, seed=4)
    profile = depth_profile(vit, x, [2, 5], context="blur", batch_size=9)
    n = vit.cfg.n_layers
    assert profile.windows == [(layer, layer + 1) for layer in range(n)]
    assert profile.maps.shape == (n, 2, *vit.grid.grid_size)
    worst = max(
        (profile.maps[layer] - caap(vit, x, [2, 5], layers=(layer, layer + 1), context="blur").map).abs().max().item()
        for layer in range(n)
    )
    print(f"[max abs diff] depth_profile vs single-layer caap {worst:.3e}")
    assert worst < 1e-5


def test_score_sweep_equals_separate_caap_calls(vit):
    x = images_for(vit, 2, seed=5)
    scores = ["logit", "prob", "log_prob", "margin", logit_diff(3)]
    results = score_sweep(vit, x, [1, 7], scores, layers=(1, 3), context="black")
    assert list(results) == ["logit", "prob", "log_prob", "margin", "logit_diff(other=3)"]
    worst = 0.0
    for score, (name, result) in zip(scores, results.items()):
        alone = caap(vit, x, [1, 7], layers=(1, 3), context="black", score=score)
        worst = max(worst, (result.map - alone.map).abs().max().item())
        assert torch.allclose(result.context_score, alone.context_score, atol=1e-6)
        assert torch.allclose(result.source_score, alone.source_score, atol=1e-6)
        assert result.settings["score"] == name and result.settings["layers"] == (1, 3)
    print(f"[max abs diff] score_sweep vs separate caap calls {worst:.3e}")
    assert worst < 1e-5
    assert not torch.allclose(results["logit"].map, results["log_prob"].map, atol=1e-3)


def test_score_sweep_default_window_and_heads(vit):
    x = images_for(vit, 1, seed=6)
    results = score_sweep(vit, x, [2], ["logit", "prob"], heads=True)
    default = caap(vit, x, [2], heads=True)  # default window, hook "z"
    assert results["logit"].settings["layers"] == default.settings["layers"]
    assert results["logit"].settings["hook"] == "z"
    assert torch.allclose(results["logit"].map, default.map, atol=1e-5)


def test_context_sweep_keys_and_maps(vit):
    x = images_for(vit, 2, seed=7)
    results = context_sweep(vit, x, [4, 2], layers=(1, 3))
    assert list(results) == ["mean", "black", "blur(sigma=8)", "noise(seed=0)"]
    for spec, (key, result) in zip(("mean", "black", "blur", "noise"), results.items()):
        assert result.settings["context"] == key
        assert torch.allclose(result.map, caap(vit, x, [4, 2], layers=(1, 3), context=spec).map, atol=1e-6)
    assert not torch.allclose(results["mean"].map, results["blur(sigma=8)"].map, atol=1e-3)


def test_context_sweep_keeps_contexts_that_share_a_name(vit):
    x = images_for(vit, 2, seed=8)
    first, second = images_for(vit, 1, seed=80)[0], images_for(vit, 1, seed=81)[0]
    results = context_sweep(vit, x, [4, 2], contexts=[first, second, "mean"], layers=(0, 2))
    assert list(results) == ["given image", "given image #2", "mean"]
    assert torch.allclose(results["given image"].map, caap(vit, x, [4, 2], layers=(0, 2), context=first).map)
    assert torch.allclose(results["given image #2"].map, caap(vit, x, [4, 2], layers=(0, 2), context=second).map)
    assert not torch.allclose(results["given image"].map, results["given image #2"].map, atol=1e-3)


def test_map_for_missing_window_is_a_key_error(vit):
    sweep = window_sweep(vit, images_for(vit, 1, seed=10), [0], [(0, 2), (1, 3)])
    assert torch.equal(sweep.map_for(1, 3), sweep.maps[1])
    with pytest.raises(KeyError, match=r"window \(0, 3\) is not in this sweep"):
        sweep.map_for(0, 3)


@pytest.mark.parametrize(
    "windows,match",
    [
        ([(0, 5)], r"window \(0, 5\) must satisfy 0 <= start < stop <= n_layers=4"),
        ([(2, 2)], r"window \(2, 2\) must satisfy 0 <= start < stop"),
        ([(0, 1), (3, 1)], r"window \(3, 1\) must satisfy"),
        ([3], r"\(start, stop\) pair of ints, got 3"),
        ([(0, 1, 2)], r"\(start, stop\) pair of ints"),
        ([], r"no windows given"),
        ("every", r"windows must be 'all' or a list of \(start, stop\) pairs"),
    ],
)
def test_bad_windows_are_clear_errors(vit, windows, match):
    with pytest.raises(ValueError, match=match):
        window_sweep(vit, images_for(vit, 1, seed=11), [0], windows)


class _Restore:
    def __init__(self, block):
        self.block = block

    def remove(self):
        del self.block.forward_queries  # back to the class method


def _count_block_rows(model, counted: list[int]):
    """Count the rows each block evaluates: forward hooks (plain torch) on every block, plus the
    readout-only path of the last block (`forward_queries`, which bypasses ``__call__``)."""
    handles = [block.register_forward_hook(lambda mod, inp, out: counted.append(inp[0].shape[0])) for block in model.blocks]
    last = model.blocks[-1]
    original = last.forward_queries

    def counting(resid, n_query):
        counted.append(resid.shape[0])
        return original(resid, n_query)

    last.forward_queries = counting
    return handles + [_Restore(last)]


def test_full_sweep_shares_block_evaluations():
    # Windows with one start share the patched trajectory up to each stop. With n layers the full
    # sweep costs sum_k k(k+1)/2 block rows against sum_k k^2 for each window alone: 0.59x at n=8
    # (0.67x at n=4, which is why this uses an 8-block model).
    model = _build(8)
    n, x = model.cfg.n_layers, images_for(model, 1, seed=12)
    rows = x.shape[0] * model.grid.n_patches  # 16 patched runs per window start
    alone_formula = sum(rows * (n - a) for a, _ in all_windows(n))

    # Count the rows the blocks actually evaluate in patched runs: with one image, the source and
    # context runs have batch 1 and every patched chunk has 16 rows (batch_size=64 > 16).
    counted: list[int] = []
    handles = _count_block_rows(model, counted)
    try:
        sweep = window_sweep(model, x, [5], "all", batch_size=64)
        sweep_rows = sum(c for c in counted if c > 1)
        counted.clear()
        for a, b in all_windows(n):
            caap(model, x, [5], layers=(a, b), batch_size=64)
        alone_rows = sum(c for c in counted if c > 1)
    finally:
        for h in handles:
            h.remove()
    assert sweep.timing["block_evals"] == sweep_rows
    assert alone_rows == alone_formula
    ratio = sweep.timing["block_evals"] / alone_formula
    print(f"[window sweep] block_evals {sweep.timing['block_evals']} alone {alone_formula} ratio {ratio:.3f}")
    assert ratio < 0.6
    expected = sum(k * (k + 1) // 2 for k in range(1, n + 1)) * rows
    assert sweep.timing["block_evals"] == expected
    assert math.isclose(ratio, expected / alone_formula)
    assert sweep.timing["rows"] == rows * n  # one patched run per (patch, start)
