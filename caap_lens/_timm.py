"""The one place caap_lens imports timm.

Every timm release imports torchvision at ``import timm``. Where torch is a CPU build and pip resolved a
CUDA build of torchvision (the usual outcome when torch is pinned to a local CPU wheel), that import
fails with ``RuntimeError: operator torchvision::nms does not exist``. timm's ViTs never call
torchvision's compiled operators, so on exactly that error we declare the two operator schemas
torchvision's Python code looks up, drop the half-imported torchvision modules and import again.
torchvision's own compiled ops (nms, roi_align) stay unusable; nothing in caap_lens needs them.
Where torchvision imports normally, this module does nothing but ``import timm``.

Example:
    >>> from caap_lens._timm import import_timm
    >>> timm = import_timm()
"""

from __future__ import annotations

import sys
from types import ModuleType

_MISSING_OP = "operator torchvision::nms does not exist"
_declared = False


def _declare_torchvision_ops() -> None:
    global _declared
    if _declared:
        return
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")  # noqa: F841 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(lib)
    _declared = True


_LIBRARIES: list = []  # torch.library.Library objects must outlive the definitions they hold


def import_timm() -> ModuleType:
    """Imports and returns timm, working around a CPU-torch / CUDA-torchvision mismatch.

    Returns:
        The ``timm`` module.

    Raises:
        ImportError: timm is not installed (``pip install timm``).
    """
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import timm
    except RuntimeError as err:
        if _MISSING_OP not in str(err):
            raise
        for name in [m for m in sys.modules if m.startswith(("torchvision", "timm"))]:
            del sys.modules[name]
        _declare_torchvision_ops()
        import timm
    return timm
