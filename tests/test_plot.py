"""Figure structure of caap_lens.plot: traces, grid shapes, axes, hover text, colour scales, sliders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import plotly.graph_objects as go
from PIL import Image

from caap_lens.grid import PatchGrid
from caap_lens.plot import (
    depth_heatmap,
    depth_profile_lines,
    depth_slider,
    map_grid,
    map_overlay,
    top_classes_bar,
)
from caap_lens.plot.common import color_range, image_to_rgb

# The scales as plotly resolves them (literal names, so a change of the library's choice shows here).
DIVERGING_SCALE = go.Heatmap(colorscale="RdBu_r").colorscale
SEQUENTIAL_SCALE = go.Heatmap(colorscale="Viridis").colorscale

GRID = PatchGrid(grid_size=(4, 5), patch_size=(16, 16), n_prefix_tokens=1)  # 64 x 80 pixels, 20 patches
N_GRID_SHAPES = (4 + 1) + (5 + 1)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)


@pytest.fixture()
def signed_map() -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, 20).reshape(4, 5)


@pytest.fixture()
def profile() -> torch.Tensor:
    return torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ map_overlay
def test_overlay_structure(rgb, signed_map):
    fig = map_overlay(rgb, signed_map, GRID, title="my map", value_name="logit")
    assert [t.type for t in fig.data] == ["image", "heatmap"]
    assert len(fig.layout.shapes) == N_GRID_SHAPES
    assert all(s.type == "line" for s in fig.layout.shapes)
    assert fig.layout.title.text == "my map"
    assert fig.layout.xaxis.title.text == "patch column" and fig.layout.yaxis.title.text == "patch row"
    heat = fig.data[1]
    assert np.asarray(heat.z).shape == (4, 5)
    assert heat.showscale is not False and heat.colorbar.title.text == "logit"
    assert 0 < heat.opacity < 1
    # one cell per patch, exactly over the patch's pixels
    assert (heat.x0, heat.dx, heat.y0, heat.dy) == (8, 16, 8, 16)
    assert fig.layout.yaxis.autorange == "reversed" or list(fig.layout.yaxis.range) == [64, 0]
    # grid lines at patch boundaries
    xs = sorted({s.x0 for s in fig.layout.shapes if s.x0 == s.x1})
    ys = sorted({s.y0 for s in fig.layout.shapes if s.y0 == s.y1})
    assert xs == [0, 16, 32, 48, 64, 80] and ys == [0, 16, 32, 48, 64]


def test_overlay_hover_text_names_patch_row_col_value(rgb, signed_map):
    heat = map_overlay(rgb, signed_map, GRID).data[1]
    patch = GRID.patch_of_rc(2, 3)
    text = heat.text[2][3]
    assert f"patch {patch}" in text and "row 2" in text and "col 3" in text
    assert f"{float(signed_map[2, 3]):.4g}" in text
    assert "%{text}" in heat.hovertemplate


def test_overlay_diverging_scale_centred_at_zero(rgb, signed_map):
    heat = map_overlay(rgb, signed_map, GRID).data[1]
    assert heat.zmin == -heat.zmax == -2.0
    assert heat.colorscale == DIVERGING_SCALE and heat.colorscale[len(heat.colorscale) // 2][1] == "rgb(247,247,247)"
    positive = map_overlay(rgb, signed_map + 5, GRID).data[1]
    assert positive.zmin == pytest.approx(4.0) and positive.zmax == pytest.approx(7.0)
    assert positive.colorscale == SEQUENTIAL_SCALE  # one-signed values: not a diverging scale
    custom = map_overlay(rgb, signed_map, GRID, colorscale="Hot").data[1]
    assert custom.colorscale != heat.colorscale


def test_overlay_denormalises_model_input(rgb, signed_map):
    x = (torch.from_numpy(rgb).permute(2, 0, 1) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    fig = map_overlay(x[None], signed_map, GRID, mean=MEAN, std=STD)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), np.round(rgb * 255), atol=1)
    with pytest.raises(ValueError, match="mean="):
        map_overlay(x, signed_map, GRID)  # normalised without mean/std


def test_overlay_stretches_map_over_an_image_of_another_size(signed_map):
    fig = map_overlay(np.zeros((128, 200, 3), np.uint8), signed_map, GRID)
    heat = fig.data[1]
    assert (heat.dx, heat.dy) == (40, 32)
    assert max(s.x1 for s in fig.layout.shapes) == 200 and max(s.y1 for s in fig.layout.shapes) == 128


def test_overlay_rejects_wrong_map_shape(rgb):
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        map_overlay(rgb, torch.zeros(5, 4), GRID)


@pytest.mark.parametrize(
    "image, shape",
    [
        (np.zeros((10, 12)), (10, 12, 3)),
        (np.zeros((10, 12, 1), np.uint8), (10, 12, 3)),
        (np.zeros((10, 12, 4), np.uint8), (10, 12, 3)),
        (torch.zeros(3, 10, 12), (10, 12, 3)),
        (torch.zeros(1, 1, 10, 12), (10, 12, 3)),
        (Image.new("L", (12, 10)), (10, 12, 3)),
        (Image.new("RGBA", (12, 10)), (10, 12, 3)),
    ],
)
def test_image_to_rgb_shapes(image, shape):
    out = image_to_rgb(image)
    assert out.shape == shape and out.dtype == np.uint8


def test_color_range():
    assert color_range(np.array([-1.0, 3.0]))["diverging"]
    r = color_range(np.array([1.0, 3.0]))
    assert not r["diverging"] and (r["zmin"], r["zmax"]) == (1.0, 3.0)
    flat = color_range(np.zeros(4))
    assert flat["zmin"] < flat["zmax"]


# --------------------------------------------------------------------------------- map_grid
def test_map_grid_rows_images_columns_methods(rgb):
    images = np.stack([rgb, rgb[::-1]])
    maps = {
        "mean": torch.randn(2, 4, 5),
        "blur": torch.rand(2, 4, 5) + 1,
        "noise": torch.randn(2, 4, 5) * 10,
    }
    fig = map_grid(images, maps, GRID, row_titles=["a", "b"])
    assert [t.type for t in fig.data] == ["image", "heatmap"] * 6
    assert len(fig.layout.shapes) == 6 * N_GRID_SHAPES
    annotations = {a.text for a in fig.layout.annotations}
    assert {"mean", "blur", "noise", "a", "b"} <= annotations
    # one colour axis per column, shared by its rows, covering both images' maps
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    axes = [h.coloraxis for h in heatmaps]
    assert axes == ["coloraxis"] * 2 + ["coloraxis2"] * 2 + ["coloraxis3"] * 2  # column by column
    for j, name in enumerate(maps):
        ax = fig.layout["coloraxis" if j == 0 else f"coloraxis{j + 1}"]
        values = maps[name]
        if values.min() < 0 < values.max():
            assert ax.cmin == -ax.cmax and ax.cmax == pytest.approx(float(values.abs().max()))
        else:
            assert (ax.cmin, ax.cmax) == pytest.approx((float(values.min()), float(values.max())))
        assert ax.colorbar.orientation == "h"
    # every heatmap sits in its own subplot
    assert len({(h.xaxis, h.yaxis) for h in heatmaps}) == 6


def test_map_grid_normalised_tensor_batch_and_errors(rgb):
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - 0.5) / 0.25
    fig = map_grid(x, {"only": torch.zeros(4, 5)}, GRID, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert [t.type for t in fig.data] == ["image", "heatmap"]
    with pytest.raises(ValueError, match="maps"):
        map_grid(np.stack([rgb, rgb]), {"m": torch.zeros(3, 4, 5)}, GRID)
    with pytest.raises(ValueError, match="no maps"):
        map_grid(rgb, {}, GRID)


# --------------------------------------------------------------------------- top_classes_bar
def test_top_classes_bar():
    logits = torch.tensor([0.0, 3.0, 1.0, -2.0, 2.0, 0.5])
    names = ["a", "b", "c", "d", "e", "f"]
    fig = top_classes_bar(logits, names, k=3, highlight=4)
    assert len(fig.data) == 1 and fig.data[0].type == "bar" and fig.data[0].orientation == "h"
    assert list(fig.data[0].y) == ["b (1)", "e (4)", "c (2)"]
    probs = logits.softmax(-1)
    np.testing.assert_allclose(fig.data[0].x, probs[[1, 4, 2]].numpy(), rtol=1e-6)
    assert fig.layout.yaxis.autorange == "reversed"  # best at the top
    assert "probability" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "class"
    colors = list(fig.data[0].marker.color)
    assert colors[1] != colors[0] == colors[2]  # the highlighted target
    sig = top_classes_bar(logits[None], names, k=2, kind="sigmoid")
    np.testing.assert_allclose(sig.data[0].x, torch.sigmoid(logits[[1, 4]]).numpy(), rtol=1e-6)
    assert "sigmoid" in sig.layout.xaxis.title.text
    raw = top_classes_bar(logits, None, k=10, kind="logits")
    assert len(raw.data[0].y) == 6 and raw.data[0].y[0] == "class 1"
    assert raw.layout.xaxis.title.text == "logit"


# ------------------------------------------------------------------------------------ depth
def test_depth_profile_lines(profile):
    patches = [0, 7, 19]
    fig = depth_profile_lines(profile, GRID, patches, layers=[2, 3, 4, 5, 6, 7], value_name="logit")
    assert [t.type for t in fig.data] == ["scatter"] * 4  # 3 patches + the mean
    for trace, patch in zip(fig.data, patches):
        r, c = GRID.rc_of(patch)
        assert list(trace.x) == [2, 3, 4, 5, 6, 7]
        np.testing.assert_allclose(trace.y, profile[:, r, c].double().numpy())
        assert f"patch {patch}" in trace.hovertemplate and f"row {r}" in trace.hovertemplate
        assert f"col {c}" in trace.hovertemplate and "%{y" in trace.hovertemplate
    assert fig.data[-1].name == "mean of all patches"
    assert fig.layout.xaxis.title.text.startswith("layer") and fig.layout.yaxis.title.text == "logit"
    default = depth_profile_lines(profile, GRID, k=2, show_mean=False)
    assert len(default.data) == 2
    peak = profile.reshape(6, -1).max(0).values
    assert default.data[0].name.startswith(f"patch {int(peak.argmax())} ")
    with pytest.raises(IndexError):
        depth_profile_lines(profile, GRID, [20])


def test_depth_profile_lines_of_one_map_is_an_error(profile, no_shape_checks):
    with pytest.raises(ValueError, match="n_layers"):
        depth_profile_lines(profile[0], GRID)


def test_depth_heatmap(profile):
    fig = depth_heatmap(profile, GRID)
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    z = np.asarray(fig.data[0].z)
    assert z.shape == (6, 20)  # layers x patches
    np.testing.assert_allclose(z[:, 7], profile[:, 1, 2].double().numpy())
    assert "patch 7" in fig.data[0].text[0][7] and "row 1, col 2" in fig.data[0].text[0][7]
    assert "layer 0" in fig.data[0].text[0][7]
    assert fig.layout.xaxis.title.text.startswith("patch") and fig.layout.yaxis.title.text.startswith("layer")
    assert fig.data[0].zmin == -fig.data[0].zmax  # both signs: diverging about 0
    assert np.asarray(depth_heatmap(profile, GRID, [3, 4]).data[0].z).shape == (6, 2)
    assert np.asarray(depth_heatmap(profile, GRID, k=5).data[0].z).shape == (6, 5)


def test_depth_slider(profile, rgb):
    n_layers = profile.shape[0]
    fig = depth_slider(profile, GRID, rgb, layers=range(3, 3 + n_layers), value_name="logit")
    assert [t.type for t in fig.data] == ["image"] + ["heatmap"] * n_layers
    assert [t.visible for t in fig.data[1:]] == [True] + [False] * (n_layers - 1)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == n_layers
    assert [s.label for s in steps] == [str(v) for v in range(3, 3 + n_layers)]
    for i, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert visible[0] is True and visible[1:] == [j == i for j in range(n_layers)]
    assert len({(t.zmin, t.zmax) for t in fig.data[1:]}) == 1  # one shared colour range
    assert len(fig.layout.shapes) == N_GRID_SHAPES
    no_image = depth_slider(profile, GRID)
    assert [t.type for t in no_image.data] == ["heatmap"] * n_layers
    assert len(no_image.layout.sliders[0].steps) == n_layers


# ------------------------------------------------------------------------- effect vs raw
def _result(map_: torch.Tensor, context: float, score: str = "logit", relative: bool = False):
    from caap_lens.attribution.result import CAAPResult

    return CAAPResult(map=map_[None], targets=torch.tensor([0]), source_score=torch.tensor([3.0]),
                      context_score=torch.tensor([context]), grid=GRID,
                      settings={"layers": (1, 3), "score": score, "relative": relative})


def test_overlay_of_a_result_shows_the_effect_by_default(rgb):
    raw = torch.linspace(-2.0, -1.0, 20).reshape(4, 5)  # every patch below 0, most above the context
    result = _result(raw, context=-1.55)
    fig = map_overlay(rgb, result, GRID)
    heat = fig.data[1]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), (raw + 1.55).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), result.effect[0].double().numpy(), rtol=1e-6)
    assert heat.colorbar.title.text == "logit − context" and "logit − context" in heat.text[0][0]
    assert heat.zmin == -heat.zmax and heat.colorscale == DIVERGING_SCALE  # white (the middle) = no effect
    shown = map_overlay(rgb, result, GRID, values="raw").data[1]
    np.testing.assert_allclose(np.asarray(shown.z, dtype=float), raw.double().numpy(), rtol=1e-6)
    assert shown.colorbar.title.text == "logit (raw)" and shown.zmax < 0  # one-signed raw: sequential
    # a map with its context score gives the same picture; a map alone is drawn as given
    by_hand = map_overlay(rgb, raw, GRID, context_score=-1.55, value_name="logit").data[1]
    np.testing.assert_allclose(np.asarray(by_hand.z, dtype=float), np.asarray(heat.z, dtype=float), atol=1e-6)
    alone = map_overlay(rgb, raw, GRID, value_name="logit").data[1]
    assert alone.colorbar.title.text == "logit"
    np.testing.assert_allclose(np.asarray(alone.z, dtype=float), raw.double().numpy(), rtol=1e-6)
    relative = _result(raw + 1.55, context=-1.55, relative=True)  # caap(relative=True): already the effect
    np.testing.assert_allclose(np.asarray(map_overlay(rgb, relative, GRID).data[1].z, dtype=float),
                               np.asarray(heat.z, dtype=float), atol=1e-6)
    with pytest.raises(ValueError, match="'effect'"):
        map_overlay(rgb, result, GRID, values="relative")


def test_depth_plots_of_a_profile_show_the_effect_by_default(profile, rgb):
    from caap_lens.sweeps import WindowSweepResult

    n = profile.shape[0]
    context = torch.linspace(-1.0, 1.0, n)
    sweep = WindowSweepResult(maps=profile[:, None], windows=[(l, l + 1) for l in range(n)],
                              context_score=context[:, None], source_score=torch.tensor([2.0]),
                              targets=torch.tensor([0]), settings={"score": "prob"})
    effect = (profile - context[:, None, None]).double().numpy()
    lines = depth_profile_lines(sweep, GRID, [7])
    np.testing.assert_allclose(lines.data[0].y, effect[:, 1, 2], rtol=1e-6)
    assert lines.layout.yaxis.title.text == "prob − context" and list(lines.data[0].x) == list(range(n))
    heat = depth_heatmap(sweep, GRID).data[0]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float)[:, 7], effect[:, 1, 2], rtol=1e-6)
    assert heat.colorbar.title.text == "prob − context" and heat.zmin == -heat.zmax
    slider = depth_slider(sweep, GRID, rgb)
    np.testing.assert_allclose(np.asarray(slider.data[1].z, dtype=float), effect[0], rtol=1e-6)
    raw = depth_heatmap(sweep, GRID, values="raw").data[0]
    np.testing.assert_allclose(np.asarray(raw.z, dtype=float)[:, 7], profile[:, 1, 2].double().numpy(), rtol=1e-6)
    assert raw.colorbar.title.text == "prob (raw)"
    by_hand = depth_heatmap(profile, GRID, context_score=context, value_name="prob").data[0]
    np.testing.assert_allclose(np.asarray(by_hand.z, dtype=float), np.asarray(heat.z, dtype=float), atol=1e-6)
    with pytest.raises(ValueError, match="one per layer"):
        depth_heatmap(profile, GRID, context_score=[0.0, 1.0])
