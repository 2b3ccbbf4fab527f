"""Figure structure of the window-sweep, per-head and metric-curve plots: traces, axes, hover, colour scales."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from caap_lens.attribution.result import CAAPResult
from caap_lens.grid import PatchGrid
from caap_lens.metrics.curves import Curve
from caap_lens.stats import mean_ci
from caap_lens.plot import head_grid, metric_curves, window_sweep_heatmap, window_sweep_view
from caap_lens.plot.curves import band_bounds
from caap_lens.plot.sweeps import window_scores, window_table
from caap_lens.sweeps import WindowSweepResult, all_windows

GRID = PatchGrid(grid_size=(4, 5), patch_size=(16, 16), n_prefix_tokens=1)  # 64 x 80 pixels, 20 patches
N_GRID_SHAPES = (4 + 1) + (5 + 1)
N_LAYERS = 4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)


@pytest.fixture()
def sweep() -> WindowSweepResult:
    windows = all_windows(N_LAYERS)  # 10 windows
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(len(windows), 2, 4, 5, generator=gen)
    return WindowSweepResult(maps=maps, windows=windows, context_score=torch.full((len(windows), 2), 0.5),
                             source_score=torch.tensor([3.0, 2.0]), targets=torch.tensor([1, 2]),
                             settings={"relative": False})


def _text(trace, r, c) -> str:
    return trace.text[r][c]


# ---------------------------------------------------------------------------- window sweeps
def test_window_table_and_scores(sweep):
    table = window_table(np.arange(10.0), sweep.windows, N_LAYERS)
    assert table.shape == (4, 4)
    assert table[0, 0] == 0 and table[0, 3] == 3 and table[3, 3] == 9  # (0,1), (0,4), (3,4)
    assert np.isnan(table[1, 0]) and np.isnan(table[3, 0])  # stop <= start: no such window
    values, name = window_scores(sweep)
    expected = (sweep.maps.flatten(2).amax(2) - 0.5).mean(1).double().numpy()
    np.testing.assert_allclose(values, expected)
    assert name == "peak patch effect"
    one, _ = window_scores(sweep, image_index=1)
    np.testing.assert_allclose(one, (sweep.maps[:, 1].flatten(1).amax(1) - 0.5).double().numpy())
    per_image = torch.arange(20.0).reshape(10, 2)
    np.testing.assert_allclose(window_scores(sweep, per_image)[0], per_image.mean(1).numpy())
    np.testing.assert_allclose(window_scores(sweep, per_image, image_index=0)[0], per_image[:, 0].numpy())
    by_fn, _ = window_scores(sweep, lambda maps, w: maps.mean((1, 2)) + w[1])
    np.testing.assert_allclose(by_fn, (sweep.maps.mean((2, 3)).mean(1) + torch.tensor(
        [b for _, b in sweep.windows], dtype=torch.float32)).double().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="9 scores for 10 windows"):
        window_scores(sweep, np.zeros(9))


def test_window_sweep_heatmap_structure_and_hover(sweep):
    scores = torch.linspace(-1.0, 1.0, 10)
    fig = window_sweep_heatmap(sweep, N_LAYERS, scores, score_name="deletion AUC", title="t")
    assert [t.type for t in fig.data] == ["heatmap"]
    heat = fig.data[0]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (4, 4)
    assert list(heat.x) == [1, 2, 3, 4] and list(heat.y) == [0, 1, 2, 3]
    i = sweep.windows.index((1, 3))
    assert z[1, 2] == pytest.approx(float(scores[i]))
    text = _text(heat, 1, 2)
    assert "window [1, 3)" in text and "layers 1–2" in text and f"deletion AUC {float(scores[i]):.4g}" in text
    assert _text(heat, 2, 0) == ""  # no window there
    assert heat.hoverongaps is False and "%{text}" in heat.hovertemplate
    assert fig.layout.xaxis.title.text.startswith("window stop") and fig.layout.yaxis.title.text.startswith("window start")
    assert heat.colorbar.title.text == "deletion AUC" and fig.layout.title.text == "t"
    assert heat.zmin == -heat.zmax == -1.0  # both signs: diverging about 0
    # a (values, windows) pair, n_layers from the largest stop, highlighted windows
    pair = window_sweep_heatmap(([0.2, 0.4, 0.8], [(0, 1), (0, 2), (1, 2)]), highlight=[(0, 2)])
    assert [t.type for t in pair.data] == ["heatmap", "scatter"]
    assert np.asarray(pair.data[0].z, dtype=float).shape == (2, 2)
    assert list(pair.data[1].x) == [2] and list(pair.data[1].y) == [0]
    assert pair.data[0].colorbar.title.text == "score"
    default = window_sweep_heatmap(sweep, N_LAYERS, image_index=0)
    assert default.data[0].colorbar.title.text == "peak patch effect"
    with pytest.raises(ValueError, match="stops after"):
        window_sweep_heatmap(sweep, 3)


def test_window_sweep_view_structure(sweep, rgb):
    shown = [(0, 4), (1, 3)]
    auc = torch.linspace(0.0, 1.0, 10)
    fig = window_sweep_view(sweep, rgb, GRID, auc, shown, image_index=1, score_name="AUC", value_name="logit",
                            values="raw")
    assert [t.type for t in fig.data] == ["heatmap", "scatter"] + ["image", "heatmap"] * 2
    assert fig.data[0].coloraxis == "coloraxis"
    assert {fig.data[3].coloraxis, fig.data[5].coloraxis} == {"coloraxis2"}  # maps share one scale
    assert fig.layout.coloraxis.colorbar.title.text == "AUC"
    assert fig.layout.coloraxis2.colorbar.title.text == "logit (raw)"
    marks = fig.data[1]
    assert list(marks.x) == [4, 3] and list(marks.y) == [0, 1] and list(marks.text) == ["A", "B"]
    titles = [a.text for a in fig.layout.annotations]
    assert "A: window [0, 4)" in titles and "B: window [1, 3)" in titles
    # each map is the sweep's map of that window for image 1
    np.testing.assert_allclose(np.asarray(fig.data[5].z, dtype=float),
                               sweep.map_for(1, 3)[1].double().numpy(), rtol=1e-6)
    text = fig.data[3].text[2][3]
    assert f"patch {GRID.patch_of_rc(2, 3)}" in text and "row 2" in text and "col 3" in text and "logit" in text
    assert len(fig.layout.shapes) == 2 * N_GRID_SHAPES
    lo, hi = fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax
    maps = torch.stack([sweep.map_for(0, 4)[1], sweep.map_for(1, 3)[1]])
    assert lo == -hi and hi == pytest.approx(float(maps.abs().max()))
    # defaults: best window, middle third (1, 2), whole network (0, 4); normalised input
    x = torch.as_tensor((rgb - np.array(MEAN)) / np.array(STD)).permute(2, 0, 1).float()
    default = window_sweep_view(sweep, x, GRID, auc, mean=MEAN, std=STD)
    best = sweep.windows[int(auc.argmax())]
    assert list(zip(default.data[1].y, default.data[1].x)) == [best, (1, 2), (0, 4)]
    assert len(default.data) == 2 + 2 * 3
    # the default: each map minus its window's context score (0.5), on a scale centred at 0 (white = no effect)
    effect = window_sweep_view(sweep, rgb, GRID, auc, shown, image_index=1, value_name="logit")
    np.testing.assert_allclose(np.asarray(effect.data[5].z, dtype=float),
                               sweep.map_for(1, 3)[1].double().numpy() - 0.5, rtol=1e-6)
    assert effect.layout.coloraxis2.colorbar.title.text == "logit − context"
    assert effect.layout.coloraxis2.cmin == -effect.layout.coloraxis2.cmax
    assert "logit − context" in effect.data[3].text[2][3]
    with pytest.raises(ValueError, match="'effect'"):
        window_sweep_view(sweep, rgb, GRID, auc, shown, values="relative")
    with pytest.raises(KeyError):
        window_sweep_view(sweep, rgb, GRID, auc, [(2, 9)])
    with pytest.raises(TypeError):
        window_sweep_view((auc, sweep.windows), rgb, GRID)


# ---------------------------------------------------------------------------------- heads
def test_head_grid_facets_share_one_colour_scale():
    maps = torch.randn(3, 4, 4, 5, generator=torch.Generator().manual_seed(1))
    fig = head_grid(maps, GRID, layers=[4, 5, 6], value_name="logit", title="heads")
    assert [t.type for t in fig.data] == ["heatmap"] * 12
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax == pytest.approx(-float(maps.abs().max()))
    assert fig.layout.coloraxis.colorbar.title.text == "logit"
    notes = {a.text for a in fig.layout.annotations}
    assert {"layer 4", "layer 5", "layer 6", "head 0", "head 3"} <= notes
    # trace k is layer k // 4, head k % 4, in its own subplot
    k = 1 * 4 + 2
    np.testing.assert_allclose(np.asarray(fig.data[k].z, dtype=float), maps[1, 2].double().numpy(), rtol=1e-6)
    assert fig.data[k].xaxis == f"x{k + 1}"
    text = fig.data[k].text[3][4]
    assert text.startswith("layer 5, head 2") and "patch 19 (row 3, col 4)" in text
    assert f"logit {float(maps[1, 2, 3, 4]):.4g}" in text
    one_row = head_grid(maps[0], GRID)
    assert len(one_row.data) == 4 and "layer 0" in {a.text for a in one_row.layout.annotations}
    with pytest.raises(ValueError, match="per-head maps"):
        head_grid(torch.zeros(3, 4, 5, 5), GRID)
    with pytest.raises(ValueError, match="layer labels"):
        head_grid(maps, GRID, layers=[0, 1])


def test_head_grid_from_result_with_image(rgb):
    maps = torch.rand(2, 3, 2, 4, 5)  # [batch, layers, heads, gh, gw]
    result = CAAPResult(map=maps, targets=torch.tensor([0, 1]), source_score=torch.zeros(2),
                        context_score=torch.zeros(2, 3), grid=GRID, settings={"layers": (2, 5), "per_layer": True})
    fig = head_grid(result, GRID, image=rgb, image_index=1, grid_lines=True)
    assert [t.type for t in fig.data] == ["image", "heatmap"] * 6
    assert {a.text for a in fig.layout.annotations} >= {"layer 2", "layer 3", "layer 4", "head 0", "head 1"}
    np.testing.assert_allclose(np.asarray(fig.data[1].z, dtype=float), maps[1, 0, 0].double().numpy(), rtol=1e-6)
    assert fig.data[0].source.startswith("data:image/png;base64,")
    assert len(fig.layout.shapes) == 6 * N_GRID_SHAPES
    assert fig.layout.coloraxis.colorbar.title.text == "score − context"  # the effect (context 0 here)
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax  # effects: centred at 0 (white = no effect)
    raw = head_grid(result, GRID, image=rgb, image_index=1, values="raw")
    assert raw.layout.coloraxis.colorscale == go.Heatmap(colorscale="Viridis").colorscale
    assert fig.layout.coloraxis.colorscale == go.Heatmap(colorscale="RdBu_r").colorscale
    assert raw.layout.coloraxis.cmin >= 0  # one-signed raw values: sequential, not centred
    assert raw.layout.coloraxis.colorbar.title.text == "score (raw)"
    window = CAAPResult(map=torch.rand(1, 2, 4, 5), targets=torch.tensor([0]), source_score=torch.zeros(1),
                        context_score=torch.zeros(1), grid=GRID, settings={"layers": (4, 8)})
    assert "window [4, 8)" in {a.text for a in head_grid(window, GRID).layout.annotations}


def test_head_grid_shows_the_effect_by_default():
    maps = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(3)) + 1.0  # [batch, heads, gh, gw]
    context = torch.tensor([0.4, 1.5])
    result = CAAPResult(map=maps, targets=torch.tensor([0, 1]), source_score=torch.full((2,), 3.0),
                        context_score=context, grid=GRID, settings={"layers": (1, 3), "score": "logit"})
    fig = head_grid(result, GRID, image_index=1)
    np.testing.assert_allclose(np.asarray(fig.data[2].z, dtype=float), (maps[1, 2] - 1.5).double().numpy(), rtol=1e-6)
    assert fig.layout.coloraxis.colorbar.title.text == "logit − context"
    assert "logit − context" in fig.data[2].text[0][0]
    raw = head_grid(result, GRID, image_index=1, values="raw")
    np.testing.assert_allclose(np.asarray(raw.data[2].z, dtype=float), maps[1, 2].double().numpy(), rtol=1e-6)
    assert raw.layout.coloraxis.colorbar.title.text == "logit (raw)"
    # maps with their context score given; without one they are drawn as given
    by_hand = head_grid(maps[1], GRID, context_score=1.5, value_name="logit")
    np.testing.assert_allclose(np.asarray(by_hand.data[2].z, dtype=float), np.asarray(fig.data[2].z, dtype=float))
    plain = head_grid(maps[1], GRID, value_name="logit")
    assert plain.layout.coloraxis.colorbar.title.text == "logit"
    relative = CAAPResult(map=maps - context[:, None, None, None], targets=result.targets,
                          source_score=result.source_score, context_score=context, grid=GRID,
                          settings={"layers": (1, 3), "score": "logit", "relative": True})
    np.testing.assert_allclose(np.asarray(head_grid(relative, GRID, image_index=1).data[2].z, dtype=float),
                               np.asarray(fig.data[2].z, dtype=float), rtol=1e-6)  # already the effect


# ---------------------------------------------------------------------------------- curves
def _curve(y: torch.Tensor, kind: str = "deletion", score: str = "prob") -> Curve:
    x = torch.linspace(0, 1, y.shape[1], dtype=torch.float64)
    return Curve(x=x, y=y.double(), auc=torch.trapezoid(y.double(), x=x, dim=-1), targets=torch.zeros(y.shape[0], dtype=torch.long),
                 settings={"kind": kind, "unit": "patch", "score": score})


def test_metric_curves_mean_with_band_and_auc_in_legend():
    gen = torch.Generator().manual_seed(2)
    curves = {"caap": _curve(torch.rand(5, 9, generator=gen)), "rollout": _curve(torch.rand(5, 9, generator=gen))}
    fig = metric_curves(curves)
    assert [t.type for t in fig.data] == ["scatter"] * 4  # band + mean line per method
    band, line = fig.data[0], fig.data[1]
    assert band.fill == "toself" and band.showlegend is False and band.legendgroup == line.legendgroup == "caap"
    mean, lo, hi = mean_ci(curves["caap"].auc)
    assert line.name == f"caap — AUC {mean:.3f} [{lo:.3f}, {hi:.3f}]"
    np.testing.assert_allclose(line.y, curves["caap"].y.mean(0).numpy())
    m, lower, upper = band_bounds(curves["caap"].y, "ci")
    np.testing.assert_allclose(band.y, np.r_[upper, lower[::-1]])
    # Per point, the band is the 95% t-interval of the mean over the 5 images, as stats.mean_ci gives it.
    per_point = [mean_ci(curves["caap"].y[:, j]) for j in range(9)]
    np.testing.assert_allclose(m, [p.mean for p in per_point], rtol=1e-12)
    np.testing.assert_allclose(lower, [p.lo for p in per_point], rtol=1e-9)
    np.testing.assert_allclose(upper, [p.hi for p in per_point], rtol=1e-9)
    assert fig.layout.xaxis.title.text == "fraction of patches removed, most important first"
    assert fig.layout.yaxis.title.text == "target-class probability (softmax)"
    assert fig.layout.title.text == "Deletion curves (mean of 5 images)"
    assert "caap" in line.hovertemplate and "mean of 5 images" in line.hovertemplate
    assert fig.data[1].line.color != fig.data[3].line.color
    std = metric_curves(curves, band="std")
    np.testing.assert_allclose(std.data[0].y[:9], (curves["caap"].y.mean(0) + curves["caap"].y.std(0)).numpy())
    assert len(metric_curves(curves, band="none").data) == 2


def test_metric_curves_one_image_and_titles():
    curves = {"caap": _curve(torch.rand(3, 5), "insertion"), "rise": _curve(torch.rand(3, 5), "insertion")}
    fig = metric_curves(curves, image_index=2, title="one", y_title="p")
    assert [t.type for t in fig.data] == ["scatter", "scatter"]  # no bands for one image
    assert fig.data[0].name == f"caap — AUC {float(curves['caap'].auc[2]):.3f}"
    np.testing.assert_allclose(fig.data[1].y, curves["rise"].y[2].numpy())
    assert fig.layout.title.text == "one" and fig.layout.yaxis.title.text == "p"
    assert "inserted" in fig.layout.xaxis.title.text
    single = metric_curves({"caap": _curve(torch.rand(1, 5))})
    assert len(single.data) == 1 and single.data[0].name.startswith("caap — AUC ")
    with pytest.raises(IndexError):
        metric_curves(curves, image_index=3)
    with pytest.raises(ValueError):
        metric_curves({})


def test_window_sweep_view_fits_a_1400_px_window(sweep, rgb):
    for k in (1, 3, 5):
        shown = sweep.windows[:k]
        assert window_sweep_view(sweep, rgb, GRID, windows_to_show=shown).layout.width <= 1400
    two = window_sweep_view(sweep, rgb, GRID, windows_to_show=sweep.windows[:2])
    assert two.layout.height == 360 + 170  # narrow enough: the requested size is kept
    wide = window_sweep_view(sweep, rgb, GRID, windows_to_show=sweep.windows[:5], max_width=None)
    assert wide.layout.width > 1400  # the limit, not the layout, keeps it narrow
