"""Reliability: every bad input of the reliability probe (issue 10) gets a clear outcome, and the table
in ``docs/reliability.md`` is generated from these very cases.

Each case in `CASES` runs one bad (or borderline) input through the API or the CLI and states its
outcome: the error type and the words that tell the user what to do, a warning, or a documented,
correct conversion. ``test_case`` runs each; ``test_reliability_doc_is_current`` renders the table
from the same cases and fails when ``docs/reliability.md`` differs. Regenerate the page with::

    CAAP_LENS_WRITE_DOCS=1 python -m pytest tests/test_reliability.py -k doc

Thread-safety tests (real threads on one model) are at the end of this file.
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import warnings
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from caap_lens import HookedViT, caap, depth_profile, window_sweep
from caap_lens.loading.timm_vit import UnsupportedModelError, from_timm

from conftest import make_timm, no_hooks_left, tiny_vit

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"


# ------------------------------------------------------------------------------------- fixtures
def tiny() -> HookedViT:
    """A 2-layer, 3-head ViT on 32 px images (2x2 patch grid), 1000 classes, perturbed random weights."""
    return tiny_vit(seed=10, depth=2, img_size=32, num_classes=1000)


def headless() -> HookedViT:
    return tiny_vit(seed=11, depth=2, img_size=32, num_classes=0)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=gen)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``caap-lens`` in-process: (exit status, stderr)."""
    from caap_lens.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = main(argv)
    return status, err.getvalue()


def png_bomb(path: Path, side: int = 40_000) -> Path:
    """A 100-byte PNG claiming ``side`` x ``side`` pixels: Pillow refuses it on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def small_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One bad input and its outcome.

    ``kind``: ``"raises"`` (``error`` raised, message contains every word), ``"warns"`` (``error`` is
    the warning category), ``"exit2"`` (the CLI exits 2 with one stderr line containing the words) or
    ``"works"`` (``run`` returns normally; its own assertions check the result).
    """

    id: str
    where: str
    input: str
    kind: str
    behaviour: str
    run: Callable[[Path], Any]
    error: type | None = None
    words: tuple[str, ...] = ()
    issue: str = ""
    extra: dict = field(default_factory=dict)


def _caap(**kwargs: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        x = kwargs.pop("x", None)
        return caap(tiny(), images() if x is None else x, **{"target": 0, "layers": (0, 1), **kwargs})

    return run


def _target_float(tmp: Path) -> None:
    result = caap(tiny(), images(), target=2.0, layers=(0, 1))
    assert result.targets.tolist() == [2, 2]


def _hwc_255(tmp: Path) -> Any:
    pixels = np.random.default_rng(0).uniform(0, 255, size=(32, 32, 3))  # float64 0..255
    return caap(tiny(), pixels, target=0, layers=(0, 1))


def _nan_pixels(value: float) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        x = images(3)
        x[1, 0, 5, 7] = value
        return caap(tiny(), x, target=0, layers=(0, 1))

    return run


def _nan_numpy(tmp: Path) -> Any:
    batch = np.random.default_rng(0).uniform(0, 1, size=(2, 32, 32, 3)).astype(np.float32)
    batch[1, 3, 3, 0] = np.nan
    return caap(tiny(), batch, target=0, layers=(0, 1))


def _unnormalised(tmp: Path) -> Any:
    import caap_lens.preprocessing as prep

    prep._warned_unnormalised = False  # the warning is shown once per process
    try:
        return caap(tiny(), torch.rand(1, 3, 32, 32), target=0, layers=(0, 1))
    finally:
        prep._warned_unnormalised = False


def _uint8_context(tmp: Path) -> Any:
    ctx = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    return caap(tiny(), images(), target=0, layers=(0, 1), context=ctx)


def _empty(fn: str) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        x = torch.empty(0, 3, 32, 32)
        if fn == "caap":
            return caap(tiny(), x, target=0)
        if fn == "window_sweep":
            return window_sweep(tiny(), x)
        if fn == "depth_profile":
            return depth_profile(tiny(), x)
        from caap_lens.baselines import METHODS, attribute

        if fn.startswith("direct:"):  # the method function itself, not through attribute()
            return METHODS[fn.split(":")[1]](tiny(), x, torch.empty(0, dtype=torch.long))
        return attribute(fn.split(":")[1], tiny(), x)

    return run


def _scalar_score(tmp: Path) -> Any:
    def total_logit(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output.gather(1, target[:, None]).sum()  # one number for all rows: a mistake

    return caap(tiny(), images(), target=0, layers=(0, 1), score=total_logit)


def _logit_diff(other: Any, run: bool = False) -> Any:
    from caap_lens.attribution.scores import logit_diff

    score = logit_diff(other)
    return caap(tiny(), images(), target=0, layers=(0, 1), score=score) if run else score


def _embeddings(n: int) -> Any:
    from caap_lens.attribution.scores import embedding_similarity

    return embedding_similarity(torch.randn(n, 192, generator=torch.Generator().manual_seed(0)))


def _headless_target(tmp: Path) -> Any:
    return caap(headless(), images(), target=87, layers=(0, 1))


def _top_k(tmp: Path) -> Any:
    return caap(tiny(), images(), target=0, layers=(0, 1)).top_patches(k=-1)


def _recovered(tmp: Path) -> None:
    # A window ending before the readout token is read... is not enough: patch a context equal to the source.
    x = images(1)
    result = caap(tiny(), x, target=0, layers=(0, 1), context=x)
    assert torch.equal(result.source_score, result.context_score)
    with pytest.warns(RuntimeWarning, match="recovered is undefined"):
        rec = result.recovered
    assert bool(torch.isnan(rec).all()) and not bool(torch.isinf(rec).any())


def _missing_checkpoint(tmp: Path) -> Any:
    return from_timm("vit_tiny_patch16_224", checkpoint_path=str(tmp / "missing.safetensors"), depth=1)


def _timm(**kwargs: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        return from_timm(make_timm("vit_tiny_patch16_224", depth=kwargs.pop("depth", 1), img_size=32, **kwargs))

    return run


def _family_forced(tmp: Path) -> Any:
    return from_timm(make_timm("vit_tiny_patch16_224", depth=1, img_size=32), family="deit3")


def _registers(tmp: Path) -> None:
    timm_model = make_timm("vit_base_patch16_reg4_gap_256", depth=1, img_size=32)
    model = from_timm(timm_model)
    assert model.cfg.n_register_tokens == 4 and model.cfg.family == "vit"
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x), timm_model(x))


def _in_chans(n: int) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        timm_model = make_timm("vit_tiny_patch16_224", depth=1, img_size=32, in_chans=n)
        model = from_timm(timm_model)
        assert len(model.cfg.image_mean) == n
        x = torch.randn(2, n, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), timm_model(x))

    return run


def _pool_include_prefix(tmp: Path) -> None:
    # the probe's repro: avg pooling over the prefix tokens too differed from timm by ~1 logit
    timm_model = make_timm("vit_tiny_patch16_224", depth=1, img_size=64, global_pool="avg",
                           pool_include_prefix=True)
    model = from_timm(timm_model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), timm_model(x))


def _threads(tmp: Path) -> None:
    check_threads_equal_single_threaded(n_threads=3)


def _cli(*argv: str, setup: Callable[[Path], list[str]] | None = None) -> Callable[[Path], Any]:
    def run(tmp: Path) -> Any:
        extra = setup(tmp) if setup is not None else []
        return run_cli(["explain", "--no-progress", "--no-depth", "--out", str(tmp / "out"), *argv, *extra])

    return run


TIMM_RANDOM = ["--model", "vit_tiny_patch16_224", "--timm-arg", "pretrained=False", "--timm-arg", "img_size=32"]

CASES: list[Case] = [
    # ---- silent wrong answers
    Case("pool_include_prefix", "from_timm", "`global_pool='avg', pool_include_prefix=True`", "works",
         "modelled: logits equal timm's bit for bit (were ~1 logit off)", _pool_include_prefix),
    Case("threads", "caap", "seven threads on one model: `caap` in fp32 and bf16, `window_sweep`, `model(x)`, "
         "`run_with_cache`, `run_with_hooks`", "works",
         "serialised by the model's re-entrant lock: every map equals its single-threaded map", _threads),
    Case("heads_float", "caap", "`heads=[1.7]`", "raises", "refused (patched head 1 and recorded 1.7)",
         _caap(heads=[1.7]), ValueError, ("heads must be indices", "not an int")),
    Case("heads_dupes", "caap", "`heads=[0, 0]`", "raises", "refused (gave duplicate maps)",
         _caap(heads=[0, 0]), ValueError, ("repeated",)),
    Case("heads_int", "caap", "`heads=2`", "raises", "refused, with the fix", _caap(heads=2), ValueError,
         ("heads=[2]",)),
    Case("target_bool", "caap", "`target=True`", "raises", "refused (was class 1)", _caap(target=True),
         ValueError, ("not a class", "class index")),
    Case("target_none", "caap", "`target=None`", "raises", "refused ('NoneType' is not iterable)",
         _caap(target=None), ValueError, ("not a class", "'predicted'")),
    Case("target_float", "caap", "`target=2.0`", "works", "class 2: a whole float is that index (documented)",
         _target_float),
    Case("target_fraction", "caap", "`target=2.5`", "raises", "refused", _caap(target=2.5), ValueError,
         ("not a whole number",)),
    Case("layers_bool", "caap", "`layers=(True, 3)`", "raises", "refused (was (1, 3))", _caap(layers=(True, 3)),
         ValueError, ("pair of ints",)),
    Case("batch_size_float", "caap", "`batch_size=2.5`", "raises", "refused", _caap(batch_size=2.5), ValueError,
         ("batch_size must be a positive int",)),
    Case("batch_size_str", "caap", "`batch_size='8'`", "raises", "refused", _caap(batch_size="8"), ValueError,
         ("batch_size must be a positive int",)),
    Case("batch_size_none", "caap", "`batch_size=None`", "raises", "refused", _caap(batch_size=None), ValueError,
         ("batch_size must be a positive int",)),
    Case("numpy_hwc_255", "preprocess", "float64 HWC numpy image in 0..255", "raises",
         "refused (was taken as 0..1: inputs reached ~1600)", _hwc_255, ValueError, ("divide by 255",)),
    Case("context_uint8", "caap", "uint8 context image tensor", "raises", "refused (was used unnormalised)",
         _uint8_context, TypeError, ("model.preprocess",)),
    Case("context_nan", "caap", "a context image tensor holding NaN", "raises", "refused (NaN map)",
         _caap(context=torch.full((3, 32, 32), float("nan"))), ValueError, ("context image", "NaN")),
    Case("region_none", "caap", "`region=` a bool mask with no regions `[0, gh, gw]`", "raises",
         "refused (was a torch.cat error)", _caap(region=torch.zeros(0, 2, 2, dtype=torch.bool)), ValueError,
         ("no regions",)),
    Case("nan_pixels", "caap", "a NaN pixel in image 1 of a tensor batch", "raises", "refused (NaN map)",
         _nan_pixels(float("nan")), ValueError, ("image 1", "NaN")),
    Case("inf_pixels", "caap", "a +inf pixel in image 1", "raises", "refused (NaN map)", _nan_pixels(float("inf")),
         ValueError, ("image 1", "infinite")),
    Case("nan_numpy", "preprocess", "a NaN pixel in image 1 of an NHWC numpy batch", "raises", "refused",
         _nan_numpy, ValueError, ("image 1", "NaN")),
    Case("unnormalised", "caap", "a float tensor with every value in [0, 1]", "warns",
         "used as normalised input (the convention), with a one-time warning saying how to silence it",
         _unnormalised, None, ("model.preprocess", "filterwarnings", "UnnormalisedInputWarning")),
    # ---- internal errors
    Case("empty_caap", "caap", "empty batch `(0, 3, H, W)`", "raises", "clear error (was IndexError)",
         _empty("caap"), ValueError, ("empty batch", "at least one image")),
    Case("empty_window_sweep", "window_sweep", "empty batch", "raises", "the same error", _empty("window_sweep"),
         ValueError, ("empty batch", "at least one image")),
    Case("empty_depth_profile", "depth_profile", "empty batch", "raises", "the same error",
         _empty("depth_profile"), ValueError, ("empty batch", "at least one image")),
    Case("empty_attribute_caap", "attribute('caap')", "empty batch", "raises", "the same error",
         _empty("attribute:caap"), ValueError, ("empty batch", "at least one image")),
    Case("empty_attribute_occlusion", "attribute('occlusion')", "empty batch", "raises",
         "the same error (was a torch.cat error)", _empty("attribute:occlusion"), ValueError,
         ("empty batch", "at least one image")),
    Case("empty_direct_rollout", "baselines.rollout", "empty batch, the method called directly", "raises",
         "the same error (was a silent empty map)", _empty("direct:rollout"), ValueError,
         ("empty batch", "at least one image")),
    Case("empty_direct_occlusion", "baselines.occlusion", "empty batch, the method called directly", "raises",
         "the same error (was a torch.cat error)", _empty("direct:occlusion"), ValueError,
         ("empty batch", "at least one image")),
    Case("score_scalar", "caap", "a score callable returning one scalar", "raises", "clear error (reshape error)",
         _scalar_score, ValueError, ("one value per row",)),
    Case("logit_diff_float", "scores", "`logit_diff(2.5)`", "raises", "refused (an IndexError at run time)",
         lambda tmp: _logit_diff(2.5), ValueError, ("class index",)),
    Case("logit_diff_range", "caap", "`score=logit_diff(1000)` on a 1000-class model",
         "raises", "says the range (was an IndexError)", lambda tmp: _logit_diff(1000, run=True), ValueError,
         ("out of range",)),
    Case("embedding_range", "caap", "`score=embedding_similarity(E)` with a target beyond `E`'s rows", "raises",
         "says the range (was an IndexError)", lambda tmp: caap(headless(), images(), target=[0, 3], layers=(0, 1),
                                                               score=_embeddings(3)), ValueError,
         ("targets index the 3 embeddings",)),
    Case("fwd_hooks_name", "caap", "`fwd_hooks=[('blocks.0.hook_resid', fn)]` (no such hook point)", "raises",
         "names it (was a KeyError)", _caap(fwd_hooks=[("blocks.0.hook_resid", lambda act, hook: act)]), ValueError,
         ("unknown hook point", "model.hook_dict")),
    Case("start_at_layer_float", "HookedViT", "`model(resid, start_at_layer=1.5)`", "raises",
         "refused (was a slicing TypeError)",
         lambda tmp: tiny()(torch.zeros(1, 5, 192), start_at_layer=1.5), ValueError, ("int layer index",)),
    Case("headless_target", "caap", "`target=87` on a headless model", "raises",
         "refused: it would pick feature channel 87", _headless_target, ValueError,
         ("headless", "embedding_similarity")),
    Case("top_patches_k", "CAAPResult", "`top_patches(k=-1)`", "raises", "refused", _top_k, ValueError,
         ("k must be a positive int",)),
    Case("recovered_equal", "CAAPResult", "`recovered` when the source equals the context", "works",
         "NaN with a RuntimeWarning naming the images (was inf)", _recovered),
    Case("checkpoint_missing", "from_timm", "`checkpoint_path=` a missing file", "raises",
         "clear error (was an empty FileNotFoundError)", _missing_checkpoint, FileNotFoundError,
         ("does not exist", "checkpoint")),
    Case("registers", "from_timm", "`vit_base_patch16_reg4_gap_256` (registers, no CLS token)", "works",
         "converts as the 'vit' family, bit for bit (was refused without saying family=)", _registers),
    Case("family_forced", "from_timm", "`family='deit3'` on a model without layer scale", "raises",
         "says why and what to pass", _family_forced, UnsupportedModelError, ("init_values", "family")),
    Case("in_chans_1", "from_timm", "`in_chans=1`", "works", "converts (mean/std averaged to 1 channel)",
         _in_chans(1)),
    Case("in_chans_4", "from_timm", "`in_chans=4`", "works", "converts (mean/std averaged to 4 channels)",
         _in_chans(4)),
    Case("global_pool_prr", "from_timm", "`global_pool='prr'`", "raises", "names the option (was about 'map')",
         _timm(global_pool="prr"), UnsupportedModelError, ("global_pool='prr'", "global_pool='token'")),
    Case("depth_0", "from_timm", "`depth=0`", "raises", "clear error (was IndexError)", _timm(depth=0),
         UnsupportedModelError, ("depth=0",)),
    Case("qk_norm", "from_timm", "`qk_norm=True`", "raises", "names the option", _timm(qk_norm=True),
         UnsupportedModelError, ("qk_norm=True",)),
    Case("act_silu", "from_timm", "`act_layer='silu'`", "raises", "names the option", _timm(act_layer="silu"),
         UnsupportedModelError, ("act_layer",)),
    # ---- the command line
    Case("cli_bomb", "CLI", "a decompression-bomb PNG", "exit2", "one line (was a traceback)",
         _cli(setup=lambda tmp: [str(png_bomb(tmp / "bomb.png"))]), None, ("decompression bomb",)),
    Case("cli_out_file", "CLI", "`--out` an existing file", "exit2", "one line (was a traceback)",
         lambda tmp: run_cli(["explain", "--no-progress", "--out", str(small_png(tmp / "taken.png"))]), None,
         ("is an existing file", "give a folder")),
    Case("cli_depth_0", "CLI", "`--timm-arg depth=0`", "exit2", "one line (was a traceback)",
         _cli(*TIMM_RANDOM, "--timm-arg", "depth=0"), None, ("depth=0",)),
    Case("cli_device_meta", "CLI", "`--device meta`", "exit2", "one line (was a traceback)",
         _cli("--device", "meta"), None, ("--device meta", "cpu, cuda")),
    Case("cli_notes_txt", "CLI", "`--model notes.txt` (a text file)", "exit2",
         "says it is not a checkpoint (was 'cannot read checkpoint ...: 101')",
         _cli(setup=lambda tmp: ["--model", str(_write(tmp / "notes.txt")), "--arch", "vit_tiny_patch16_224"]),
         None, ("not a checkpoint",)),
    Case("cli_model_empty", "CLI", "`--model ''`", "exit2", "says it is empty (was 'is a folder')",
         _cli("--model", ""), None, ("--model is empty",)),
    Case("cli_layers_negative", "CLI", "`--layers -1:2`", "exit2", "our range message (was an argparse usage)",
         _cli("--layers", "-1:2"), None, ("0 <= START < STOP",)),
    Case("cli_num_classes", "CLI", "`--num-classes -1`", "exit2",
         "refused (built a headless model and reported 'target: class 87')",
         _cli(*TIMM_RANDOM, "--num-classes", "-1"), None, ("--num-classes must be >= 0",)),
]
CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


def _write(path: Path) -> Path:
    path.write_text("not a model\n")
    return path


RESULTS: dict[str, str] = {}


def check_case(case: Case, tmp: Path) -> str:
    """Runs one case and checks its outcome; returns the outcome as the doc shows it."""
    if case.kind == "raises":
        with pytest.raises(case.error) as info:  # type: ignore[arg-type]
            case.run(tmp)
        assert type(info.value) is case.error, (type(info.value), info.value)
        message = str(info.value)
        missing = [w for w in case.words if w not in message]
        assert not missing, f"{case.id}: {missing} not in {message!r}"
        return f"`{case.error.__name__}`"  # type: ignore[union-attr]
    if case.kind == "warns":
        from caap_lens.preprocessing import UnnormalisedInputWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.run(tmp)
        ours = [w for w in caught if issubclass(w.category, UnnormalisedInputWarning)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        message = str(ours[0].message)
        missing = [w for w in case.words if w not in message]
        assert not missing, f"{case.id}: {missing} not in {message!r}"
        return "`UnnormalisedInputWarning`, once"
    if case.kind == "exit2":
        status, err = case.run(tmp)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1, (status, err)
        assert lines[0].startswith("caap-lens: error: "), err
        missing = [w for w in case.words if w not in lines[0]]
        assert not missing, f"{case.id}: {missing} not in {lines[0]!r}"
        return "exit 2, one line"
    assert case.kind == "works", case.kind
    case.run(tmp)
    return "works"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case(case, tmp_path):
    RESULTS[case.id] = check_case(case, tmp_path)


# -------------------------------------------------------------------------------- the doc page
_HEADER = """# Reliability: bad input and what happens

Every row is a case the reliability probe (issue 10) found answered wrongly, silently, or with an
internal traceback. The table is **generated** by `tests/test_reliability.py`, which runs each case and
checks its outcome — the error type and the words in the message that tell you what to do — so it
cannot go stale: the test fails when this page differs from what the cases produce. Regenerate it with

```bash
CAAP_LENS_WRITE_DOCS=1 python -m pytest tests/test_reliability.py -k doc
```

Conventions behind the rows:

- **Images.** A float tensor is normalised model input (`(pixel - mean) / std`, as in timm and
  Captum); anything else (PIL, numpy, uint8 tensors) goes through `model.preprocess`, which expects
  0..255 uint8 or 0..1 floats and refuses values far outside 0..1 rather than rescale them. NaN or
  infinite pixels are refused, naming the image. A float batch whose values all lie in [0, 1] is used
  as given, with one `caap_lens.preprocessing.UnnormalisedInputWarning` per process; silence it with
  `warnings.filterwarnings("ignore", category=UnnormalisedInputWarning)`.
- **Empty batches** are refused with the same `ValueError` by `caap`, the sweeps and every
  `attribute(...)` method.
- **Indices** (targets, heads, layers, batch sizes) must be ints; `True`, `None` and fractions are
  refused. The one conversion: a float equal to a whole number (`2.0`, a float tensor of labels) is
  that class index.
- **Threads.** `HookedViT` has a re-entrant lock (`model.lock`) held by `forward`, `hooks()` (so
  `run_with_hooks` and `run_with_cache`), `caap`, the sweeps and bf16 weight swaps: concurrent calls
  on one model run one at a time and each gets the result it would get alone. Hold `model.lock`
  yourself around `add_hook` ... `reset_hooks` sequences.
- **timm options.** Every `VisionTransformer` constructor option is either modelled with parity
  (checked on {n_configs} random configs per test run, `tests/test_fuzz_parity.py`), without effect in eval
  mode (dropout, patch dropout, weight init), or refused with an `UnsupportedModelError` naming it.

| case | where | input | outcome | the message says | behaviour |
|---|---|---|---|---|---|
"""


def render_doc(outcomes: dict[str, str]) -> str:
    rows = []
    for case in CASES:
        words = ", ".join(f"`{w}`" if "`" not in w else w for w in case.words) or "—"
        rows.append(f"| `{case.id}` | {case.where} | {case.input} | {outcomes[case.id]} | {words} | {case.behaviour} |")
    from test_fuzz_parity import N_CONFIGS
    from test_reliability_options import HOW, options_table

    options = (
        "\n## timm `VisionTransformer` options\n\n"
        "Every constructor option, audited by `tests/test_reliability_options.py` (a timm release that adds "
        "one fails that test until it is audited): "
        + "; ".join(f"**{k}**: {v}" for k, v in HOW.items()) + ".\n\n" + options_table()
    )
    return _HEADER.replace("{n_configs}", str(N_CONFIGS)) + "\n".join(rows) + "\n" + options


def test_reliability_doc_is_current(tmp_path):
    outcomes = {}
    for case in CASES:  # reuse the outcomes of test_case when it ran in this session
        if case.id not in RESULTS:
            (tmp_path / case.id).mkdir()
        outcomes[case.id] = RESULTS.get(case.id) or check_case(case, tmp_path / case.id)
    text = render_doc(outcomes)
    if os.environ.get("CAAP_LENS_WRITE_DOCS"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.exists(), "docs/reliability.md is missing: regenerate it (see this module's docstring)"
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/reliability.md is stale: regenerate it with CAAP_LENS_WRITE_DOCS=1 python -m pytest "
        "tests/test_reliability.py -k doc"
    )


def test_reliability_doc_is_in_the_site_nav():
    assert re.search(r"^\s*- .*: reliability\.md\s*$", (REPO / "mkdocs.yml").read_text(), re.M)


# ---------------------------------------------------------------------------------- threads
def _halve(act: torch.Tensor, *, hook: Any) -> torch.Tensor:
    return act * 0.5


def check_threads_equal_single_threaded(n_threads: int = 3, rounds: int = 2) -> None:
    """Threads running fp32 CAAP, bf16 CAAP and plain forwards on one model agree with serial runs."""
    model = tiny()
    xs = [images(2, seed=s) for s in range(n_threads)]
    jobs: list[Callable[[], torch.Tensor]] = []
    for i, x in enumerate(xs):
        dtype = torch.bfloat16 if i % 2 else None
        jobs.append(lambda x=x, dtype=dtype: caap(model, x, target=1, layers=(0, 2), batch_size=3, dtype=dtype).map)
    jobs.append(lambda: torch.stack([model(xs[0]) for _ in range(4)]))  # plain forwards amid patching
    jobs.append(lambda: model.run_with_cache(xs[1])[1]["resid_pre", 1])
    jobs.append(lambda: window_sweep(model, xs[2 % len(xs)], target=2, batch_size=2).maps)
    jobs.append(lambda: torch.stack([model.run_with_hooks(xs[0], fwd_hooks=[("blocks.1.hook_resid_pre", _halve)])
                                     for _ in range(3)]))
    expected = [job() for job in jobs]
    results: dict[tuple[int, int], Any] = {}
    barrier = threading.Barrier(len(jobs))

    def worker(j: int) -> None:
        barrier.wait()
        for r in range(rounds):
            try:
                results[(j, r)] = jobs[j]()
            except Exception as err:  # recorded: an internal error is a failure too
                results[(j, r)] = err

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    for (j, r), got in results.items():
        assert not isinstance(got, Exception), f"job {j} round {r} raised {got!r}"
        # Under concurrent load CPU kernels may take another (alignment-dependent) path and differ in the
        # last bits (2.4e-7 seen once); the corruption this test exists for differs by order 1 (up to 3.6).
        diff = float((got - expected[j]).abs().max())
        assert diff <= 1e-5 * max(1.0, float(expected[j].abs().max())), f"job {j} round {r} differs by {diff}"
    assert len(results) == len(jobs) * rounds
    assert no_hooks_left(model), "hooks left behind"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "bf16 weights left behind"


def test_threads_share_one_model_safely():
    check_threads_equal_single_threaded(n_threads=4, rounds=3)


def test_one_threads_hooks_never_fire_in_another_threads_forward():
    model = tiny()
    x = images(1)
    with torch.no_grad():
        clean = model(x)
    inside, release = threading.Event(), threading.Event()

    def hooker() -> None:
        def zero(act: torch.Tensor, *, hook: Any) -> torch.Tensor:
            return torch.zeros_like(act)

        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", zero)]):
            inside.set()
            release.wait(timeout=30)

    t = threading.Thread(target=hooker)
    t.start()
    assert inside.wait(timeout=30)
    got: dict[str, torch.Tensor] = {}
    reader = threading.Thread(target=lambda: got.setdefault("out", model(x)))
    reader.start()
    reader.join(timeout=0.5)
    assert reader.is_alive(), "the plain forward ran while another thread's hooks were registered"
    release.set()
    t.join(timeout=30)
    reader.join(timeout=30)
    assert torch.equal(got["out"], clean)


def test_the_lock_survives_deepcopy_and_pickling():
    import copy
    import pickle

    model = tiny()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.lock is not model.lock
        with clone.lock, torch.no_grad():
            assert torch.equal(clone(images(1)), model(images(1)))
    assert hasattr(model, "_lock")  # copying did not strip the original's lock
