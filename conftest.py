"""Names the doctests of ``caap_lens`` share (pytest's ``doctest_namespace``).

Many docstring examples use ``model``, ``images``, ``targets``, ``result``... without defining them;
this provides them for every doctest, from the bundled ``fashion-scenes-vit`` model (4 blocks,
64-px images, an 8x8 patch grid) and its first two held-out test scenes, all offline and built once
per session (about 3 s, only when a doctest runs). It sits at the repository root because
``tests/conftest.py`` does not apply to the doctests collected from ``caap_lens/``.

Shared names:
    ``torch``, ``np``, ``caap_lens``, ``caap``, ``attribute``, ``HookedViT``: the modules / functions.
    ``model``: the bundled ``fashion-scenes-vit`` `HookedViT` (``model.grid``: 8x8 patches of 8 px).
    ``scenes``: its bundled test scenes (a `SceneSet`); ``image``: ``scenes.images[0]`` (uint8 HWC).
    ``images`` / ``x``: ``model.preprocess(scenes.images[:2])``, normalised ``[2, 3, 64, 64]``.
    ``targets``: the model's predicted classes of those two scenes (``[2]`` long, both present).
    ``masks``: bool ``[2, 64, 64]``, the pixels of each scene's target class.
    ``result``: ``caap(model, images, targets)``; ``maps``: ``result.map`` (``[2, 8, 8]``).
    ``profile``: ``depth_profile(model, images, targets)`` (``profile.maps``: ``[n_layers, 2, 8, 8]``).
    ``fn``: ``lambda m, x, t: caap(m, x, t).map`` (an attribution function for the sanity checks).

Each doctest gets its own copy of the names (rebinding one does not leak), but the objects are
shared: an example must not modify ``model``, ``images`` or ``result`` in place.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # doctests never download

import pytest

_NAMESPACE: dict[str, Any] = {}


def _build() -> dict[str, Any]:
    import numpy as np
    import torch

    import caap_lens
    from caap_lens import HookedViT, attribute, caap, depth_profile
    from caap_lens.loading.bundled import load_bundled_scenes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = HookedViT.from_pretrained("fashion-scenes-vit")
    scenes = load_bundled_scenes("fashion-scenes-vit")
    images = model.preprocess(scenes.images[:2])
    with torch.no_grad():
        targets = model(images).argmax(-1)
    masks = torch.from_numpy(np.stack([scenes.class_mask(i, int(t)) for i, t in enumerate(targets)]))
    result = caap(model, images, targets)
    profile = depth_profile(model, images, targets)
    return {
        "torch": torch, "np": np, "caap_lens": caap_lens, "caap": caap, "attribute": attribute,
        "HookedViT": HookedViT, "model": model, "scenes": scenes, "image": scenes.images[0],
        "images": images, "x": images, "targets": targets, "masks": masks, "result": result,
        "maps": result.map, "profile": profile, "fn": lambda m, x, t: caap(m, x, t).map,
    }


@pytest.fixture(autouse=True)
def _caap_lens_doctest_names(request: pytest.FixtureRequest) -> None:
    """Adds the shared names to ``doctest_namespace``, for doctest items only (tests/ pay nothing), and
    runs each doctest in its own empty working directory, so examples that write files (``"out"``,
    ``"map.safetensors"``) run as shown and leave nothing behind."""
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        return
    if not _NAMESPACE:
        _NAMESPACE.update(_build())
    request.getfixturevalue("doctest_namespace").update(_NAMESPACE)
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
