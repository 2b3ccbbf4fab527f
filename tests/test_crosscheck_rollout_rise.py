"""Rollout against a direct transcription of its published formula; the RISE curves and their blur
against a transcription of RISE's ``evaluation.py`` (issue 11).

The transcriptions are written from the papers' definitions in plain numpy loops, sharing no code
with `caap_lens`: Abnar & Zuidema (2020), eq. for attention rollout,
``Ã(l) = A(l) Ã(l-1)`` with ``A = 0.5 W_att + 0.5 I``; RISE's ``CausalMetric`` (Petsiuk et al.,
2018): replace ``step`` pixels per iteration in the explanation's order, score the softmax
probability of the originally predicted class, ``auc = (Σ s - s_0/2 - s_n/2) / n``; its insertion
substrate is the image convolved with ``gkern(klen, nsig)`` (a Gaussian-filtered impulse) with zero
padding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caap_lens.baselines import attribute
from caap_lens.metrics import deletion_curve, insertion_curve
from caap_lens.metrics.curves import RiseBlur, rise_kernel, substrate_images
from conftest import images_for, tiny_vit


def _model():
    return tiny_vit(seed=41, depth=3, img_size=32)


@pytest.fixture
def model():
    return _model()


# --------------------------------------------------------------------------------------- rollout
def rollout_transcribed(attentions: list[np.ndarray], start: int) -> np.ndarray:
    """Abnar & Zuidema's rollout for one image: heads averaged, residual as 0.5 I, renormalised rows."""
    n = attentions[0].shape[-1]
    joint = None
    for layer in range(start, len(attentions)):
        a = attentions[layer].mean(axis=0)  # [n, n]
        a = 0.5 * a + 0.5 * np.eye(n)
        a = a / a.sum(axis=-1, keepdims=True)
        if joint is None:
            joint = a
        else:  # Ã(l) = A(l) Ã(l-1), written out element by element
            joint = np.array([[sum(a[i, k] * joint[k, j] for k in range(n)) for j in range(n)] for i in range(n)])
    return joint


@pytest.mark.parametrize("start", [0, 1])
def test_rollout_equals_the_transcribed_formula(model, start):
    x = images_for(model, seed=0)
    _, cache = model.run_with_cache(x)
    attentions = [cache["pattern", layer].double().numpy() for layer in range(model.cfg.n_layers)]
    got = attribute("rollout", model, x, 0, start_layer=start).map.numpy()
    for i in range(2):
        joint = rollout_transcribed([a[i] for a in attentions], start)
        assert np.allclose(got[i].reshape(-1), joint[0, 1:], atol=1e-6)  # the CLS row over the patches


# ------------------------------------------------------------------------------------------ RISE
def gkern_transcribed(klen: int, nsig: float) -> np.ndarray:
    """RISE's gkern: a unit impulse in a klen x klen array, Gaussian-filtered (scipy)."""
    from scipy.ndimage import gaussian_filter

    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    return gaussian_filter(inp, nsig)


def rise_causal_metric(model, image, explanation, mode, step, substrate):
    """RISE's CausalMetric.single_run for one image (its softmax-wrapped model), in numpy."""
    with torch.no_grad():
        c = int(model(image[None]).argmax())
        hw = image.shape[1] * image.shape[2]
        n_steps = (hw + step - 1) // step
        start, finish = (image.clone(), substrate.clone()) if mode == "del" else (substrate.clone(), image.clone())
        start_np, finish_np = start.numpy().reshape(3, hw), finish.numpy().reshape(3, hw)
        order = np.flip(np.argsort(explanation.reshape(hw)), axis=-1)
        scores = np.empty(n_steps + 1)
        for i in range(n_steps + 1):
            x = torch.from_numpy(start_np.reshape(1, *image.shape).copy())
            scores[i] = float(model(x).softmax(-1)[0, c])
            if i < n_steps:
                coords = order[step * i : step * (i + 1)]
                start_np[:, coords] = finish_np[:, coords]
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


def test_rise_kernel_is_rises_gkern():
    for klen, nsig in [(11, 5.0), (3, 5 * 64 / 224), (7, 1.0), (1, 0.5)]:
        assert np.allclose(rise_kernel(klen, nsig).double().numpy(), gkern_transcribed(klen, nsig), atol=1e-7)


def test_deletion_and_insertion_follow_rises_causal_metric(model):
    x = images_for(model, 2, seed=3)
    gen = torch.Generator().manual_seed(4)
    maps = torch.rand(2, 32, 32, generator=gen)  # distinct values: no ties, one order
    step = 64  # 16 steps of 64 pixels on a 32 x 32 image
    deletion = deletion_curve(model, x, maps, "predicted", steps=16, unit="pixel", score="prob", substrate="mean")
    blur = RiseBlur(sigma=5.0, size=11)
    insertion = insertion_curve(model, x, maps, "predicted", steps=16, unit="pixel", score="prob", substrate=blur)
    kern = torch.from_numpy(gkern_transcribed(11, 5.0)).float()
    weights = torch.zeros(3, 3, 11, 11)
    for ch in range(3):
        weights[ch, ch] = kern  # RISE's conv2d kernel: the same blur on each channel's diagonal
    for i in range(2):
        ys, auc = rise_causal_metric(model, x[i], maps[i].numpy(), "del", step, torch.zeros_like(x[i]))
        assert np.allclose(deletion.y[i].numpy(), ys, atol=1e-6) and deletion.auc[i] == pytest.approx(auc, abs=1e-6)
        blurred = torch.nn.functional.conv2d(x[i][None], weights, padding=5)[0]
        ys, auc = rise_causal_metric(model, x[i], maps[i].numpy(), "ins", step, blurred)
        assert np.allclose(insertion.y[i].numpy(), ys, atol=1e-6) and insertion.auc[i] == pytest.approx(auc, abs=1e-6)


def test_insertion_blur_scales_with_the_image_as_rise():
    """Regression (issue 11, defect 4): insertion blurred 64-px images with sigma 8 px, 5.6x RISE's
    blur relative to the image (sigma 5 px at 224 px). The default substrate is now RISE's, scaled."""
    assert RiseBlur().settings((224, 224)) == (11, 5.0)
    size, sigma = RiseBlur().settings((64, 64))
    assert size == 3 and sigma / 64 == pytest.approx(5 / 224)
    import inspect

    assert inspect.signature(insertion_curve).parameters["substrate"].default == "rise_blur"
    model = _model()
    x = images_for(model, 1, seed=5)
    out = substrate_images(model, x, "rise_blur")
    size, sigma = RiseBlur().settings((32, 32))
    expected = torch.nn.functional.conv2d(x, rise_kernel(size, sigma).expand(3, 1, size, size), padding=size // 2,
                                          groups=3)
    assert torch.allclose(out, expected)
    curve = insertion_curve(model, x, torch.rand(1, 2, 2), "predicted", steps=4)
    assert curve.settings["substrate"] == "rise_blur"
    with torch.no_grad():
        first = model(out).softmax(-1).gather(1, curve.targets[:, None])[:, 0].double()
    assert torch.allclose(curve.y[:, 0], first, atol=1e-6)
