"""Token Grad-CAM against pytorch-grad-cam (``grad-cam`` 1.5.7), an independent implementation.

pytorch-grad-cam runs on `HookedViT` as on a timm ViT: ``target_layers=[model.blocks[-1].ln1]`` and a
``reshape_transform`` that drops the prefix tokens and puts the patch tokens on the model's grid (the
grid comes from the model, never guessed). Its raw CAM (``get_cam_image``, before ReLU) equals
`token_gradcam(relu=False)`; its public output is that map after ReLU, min-max scaled, resized to
the input (bilinear) and min-max scaled again — its own ``scale_cam_image`` applied twice to our ReLU
map, which stays unscaled on the patch grid.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from caap_lens.baselines import attribute
from conftest import tiny_vit


def _import_grad_cam():
    from caap_lens._timm import import_timm

    import_timm()  # the torchvision workaround must run before pytorch-grad-cam imports torchvision
    return pytest.importorskip("pytorch_grad_cam", reason="grad-cam absent: independent cross-check skipped")


MODELS = {  # kind -> conftest.tiny_vit arguments
    "vit": dict(seed=31, depth=2, img_size=64),
    "deit_distilled": dict(name="deit_tiny_distilled_patch16_224", seed=32, depth=2, img_size=(32, 48)),
}


@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
def test_token_gradcam_equals_pytorch_grad_cam(kind):
    grad_cam = _import_grad_cam()
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny_vit(**MODELS[kind])
    x = torch.randn(2, 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(3))
    targets = [2, 5]
    grid = model.grid
    theirs_model = copy.deepcopy(model)  # pytorch-grad-cam calls backward(): keep .grad off ours

    def reshape_transform(tokens):
        patches = tokens[:, grid.n_prefix_tokens :]
        return patches.reshape(tokens.shape[0], *grid.grid_size, -1).permute(0, 3, 1, 2)

    with grad_cam.GradCAM(model=theirs_model, target_layers=[theirs_model.blocks[-1].ln1],
                          reshape_transform=reshape_transform) as cam:
        scaled = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        acts = [a.cpu().numpy() for a in cam.activations_and_grads.activations]
        grads = [g.cpu().numpy() for g in cam.activations_and_grads.gradients]
        raw = cam.get_cam_image(x, theirs_model.blocks[-1].ln1, None, acts[0], grads[0], False)
    signed = attribute("token_gradcam", model, x, targets, relu=False).map
    assert np.allclose(raw, signed.numpy(), atol=1e-5, rtol=1e-4)
    ours = attribute("token_gradcam", model, x, targets).map
    h, w = model.cfg.image_size
    # per layer: ReLU, min-max scale and resize; then over layers: mean, min-max scale again
    assert np.allclose(scaled, scale_cam_image(scale_cam_image(ours.numpy(), (w, h))), atol=1e-5)
