"""``layers="auto"``: the chosen window's map is exactly caap's map for that window, and the criterion is the
stated insertion curve, recomputed here by hand."""

from __future__ import annotations

import pytest
import torch

from caap_lens import HookedViT, caap
from caap_lens.attribution.auto_window import candidate_windows, choose_window
from caap_lens.loading.bundled import load_bundled_scenes


@pytest.fixture(scope="module")
def bundled():
    model = HookedViT.from_pretrained("fashion-scenes-vit")
    scenes = load_bundled_scenes("fashion-scenes-vit")
    return model, model.preprocess(scenes.images[:3])


def test_candidates_cover_the_middle_of_the_network():
    for n in (4, 12, 24):
        cands = candidate_windows(n)
        assert cands and all(0 < a < b <= n for a, b in cands)
        assert len(set(cands)) == len(cands)
    assert (4, 8) in candidate_windows(12)


def test_auto_map_equals_the_map_of_the_chosen_window(bundled):
    model, x = bundled
    auto = caap(model, x, layers="auto", score="sigmoid", relative=True)
    assert auto.settings["layers"] == "auto" and len(auto.settings["windows"]) == len(x)
    for i, window in enumerate(auto.settings["windows"]):
        alone = caap(model, x[i:i + 1], layers=window, score="sigmoid", relative=True)
        torch.testing.assert_close(auto.map[i], alone.map[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(auto.context_score[i], alone.context_score[0])


def test_criterion_is_the_stated_insertion_curve(bundled):
    model, x = bundled
    cands = [(1, 2), (2, 3)]
    choice = choose_window(model, x[:2], candidates=cands, score="sigmoid", fractions=(0.25, 0.5))
    from caap_lens.attribution.contexts import resolve_context

    ctx_images = resolve_context("mean").image(model, x[:2]).expand(2, -1, -1, -1)
    n = model.grid.n_patches
    for c, window in enumerate(cands):
        for i in range(2):
            flat = choice.maps[c, i].flatten()
            values = []
            for f in (0.25, 0.5):
                keep = torch.zeros(n, dtype=torch.bool)
                keep[flat.argsort(descending=True, stable=True)[: round(f * n)]] = True
                mask = model.grid.to_pixels(keep.reshape(model.grid.grid_size).float())[None]
                with torch.no_grad():
                    out = model((mask * x[i] + (1 - mask) * ctx_images[i])[None])
                values.append(torch.sigmoid(out[0, choice.run.targets[i]]))
            assert float(choice.criterion[c, i]) == pytest.approx(float(torch.stack(values).mean()), abs=1e-5)
    assert choice.windows == [cands[int(k)] for k in choice.criterion.argmax(0)]


def test_auto_refuses_what_it_cannot_choose_for(bundled):
    model, x = bundled
    with pytest.raises(ValueError, match="does not combine"):
        caap(model, x, layers="auto", heads=True)
    with pytest.raises(ValueError, match="fractions"):
        choose_window(model, x, fractions=(0.0,))
    with pytest.raises(ValueError, match="candidate"):
        choose_window(model, x, candidates=[])
