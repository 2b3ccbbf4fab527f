"""caap_lens.report: the files written, the self-contained HTML, and a headless-Chromium render."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p and os.path.exists(p)), None)


def structured_image() -> np.ndarray:
    """64x64 RGB: light striped background, a red square on patch (1, 2), a blue one on (3, 0)."""
    a = np.full((64, 64, 3), 230, np.uint8)
    a[::4] = 200
    a[16:32, 32:48] = (220, 30, 30)
    a[48:64, 0:16] = (30, 30, 200)
    return a


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-layer random ViT on a 64x64 image: caap, depth profile and the report, written once."""
    from caap_lens import HookedViT, caap, depth_profile
    from caap_lens.report import write_report

    torch.manual_seed(0)
    names = [f"item {i}" for i in range(10)]
    model = HookedViT.from_timm("vit_tiny_patch16_224", depth=4, img_size=64, num_classes=10, class_names=names)
    x = model.preprocess(structured_image())
    with torch.inference_mode():
        logits = model(x)
    result = caap(model, x, target="predicted", layers=(1, 3))
    profile = depth_profile(model, x, result.targets)
    out = tmp_path_factory.mktemp("report")
    path = write_report(out, model=model, image_tensor=x, result=result, profile=profile,
                        image_name="my scene.png", command="caap-lens explain 'my scene.png'")
    return {"model": model, "x": x, "logits": logits, "result": result, "profile": profile, "path": path,
            "out": out}


def test_files_and_names(run):
    path, out = run["path"], run["out"]
    assert path == out / "my_scene" / "report.html"
    folder = path.parent
    assert sorted(p.name for p in folder.iterdir()) == ["map.json", "map.npy", "profile.npy", "report.html"]
    m = np.load(folder / "map.npy")
    assert m.shape == run["model"].grid.grid_size == (4, 4) and m.dtype == np.float32
    np.testing.assert_allclose(m, run["result"].map[0].numpy(), rtol=1e-6)
    prof = np.load(folder / "profile.npy")
    assert prof.shape == (4, 4, 4)
    np.testing.assert_allclose(prof, run["profile"].maps[:, 0].numpy(), rtol=1e-6)


def test_map_json(run):
    text = (run["path"].parent / "map.json").read_text()
    assert "NaN" not in text
    record = json.loads(text)
    result, model = run["result"], run["model"]
    np.testing.assert_allclose(np.array(record["map"]), result.map[0].numpy(), rtol=1e-6)
    assert record["grid"]["grid_size"] == [4, 4] and record["grid"]["patch_size"] == [16, 16]
    assert record["grid"]["n_prefix_tokens"] == 1
    settings = record["settings"]
    assert settings["layers"] == [1, 3] and settings["hook"] == "resid_pre"
    assert settings["context"] == "mean" and settings["score"] == "logit"
    target = int(result.targets[0])
    assert record["target"] == {"index": target, "name": model.class_names[target]}
    probs = torch.softmax(run["logits"][0].double(), -1)  # the prediction is the unpatched model's
    top = probs.topk(5)
    assert [c["index"] for c in record["prediction"]["top"]] == top.indices.tolist()
    np.testing.assert_allclose([c["score"] for c in record["prediction"]["top"]], top.values.numpy(), rtol=1e-5)
    assert record["prediction"]["activation"] == "softmax"  # the config's default
    assert [p["patch"] for p in record["top_patches"]] == [p["patch"] for p in result.top_patches(5)]
    assert record["timing"]["seconds"] > 0 and record["timing"]["rows"] == 16
    assert len(record["depth_profile"]["maps"]) == 4 and record["depth_profile"]["layers"] == [0, 1, 2, 3]
    assert record["source_score"] == pytest.approx(float(result.source_score[0]))
    assert record["command"].startswith("caap-lens explain")


def test_html_is_self_contained(run):
    from plotly.offline import get_plotlyjs

    page = run["path"].read_text(encoding="utf-8")
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1  # embedded inline, exactly once
    rest = page.replace(plotly_js, "")
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)  # no external script at all
    assert "cdn.plot.ly" not in rest and "https://" not in rest and "http://" not in rest
    assert rest.count("Plotly.newPlot(") == 6  # image, map, classes, lines, slider, heatmap
    for text in ("resid_pre", "mean", "logit", "[1, 3)", "my scene.png", "Top 5 patches", "Settings"):
        assert text in rest, text


def test_report_without_profile_and_with_sigmoid(run, tmp_path):
    from caap_lens.report import write_report

    path = write_report(tmp_path, model=run["model"], image_tensor=run["x"][0], result=run["result"], profile=None,
                        source_output=run["logits"][0], image_name="a/b/c.jpg", activation="sigmoid")
    assert path == tmp_path / "c" / "report.html"
    assert not (path.parent / "profile.npy").exists()
    page = path.read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") == 3 and "sigmoid" in page
    record = json.loads((path.parent / "map.json").read_text())
    assert record["depth_profile"] is None and record["prediction"]["activation"] == "sigmoid"


def test_report_with_a_profile_of_some_patches(run, tmp_path):
    from caap_lens import depth_profile
    from caap_lens.report import write_report
    from caap_lens.sweeps import window_sweep

    model, grid = run["model"], run["model"].grid
    patches = [p["patch"] for p in run["result"].top_patches(3)]
    partial = depth_profile(model, run["x"], run["result"].targets, patches=patches[::-1])
    path = write_report(tmp_path, model=model, image_tensor=run["x"], result=run["result"], profile=partial,
                        image_name="p.png")
    prof = np.load(path.parent / "profile.npy")
    assert prof.shape == (4, 4, 4)
    full = run["profile"].maps[:, 0].numpy()
    for patch in range(grid.n_patches):
        r, c = grid.rc_of(patch)
        if patch in patches:  # same numbers as the full profile
            np.testing.assert_allclose(prof[:, r, c], full[:, r, c], rtol=1e-5, atol=1e-6)
        else:
            assert np.isnan(prof[:, r, c]).all()
    record = json.loads((path.parent / "map.json").read_text())  # strict JSON: NaN written as null
    assert record["depth_profile"]["patches"] == patches  # best first by the map
    page = path.read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot(") == 5 and "covers 3 of 16 patches" in page  # no slider
    region = torch.zeros(3, *grid.grid_size, dtype=torch.bool)  # a profile of regions has no grid layout
    region[0, 0, 0] = region[1, 1, 1] = region[2, 2, 2] = True
    regions = window_sweep(model, run["x"], run["result"].targets, partial.windows, region=region)
    with pytest.raises(ValueError, match="patches="):
        write_report(tmp_path, model=model, image_tensor=run["x"], result=run["result"], profile=regions,
                     image_name="q.png")


def test_report_rejects_region_maps(run, tmp_path):
    from caap_lens.attribution.result import CAAPResult
    from caap_lens.report import write_report

    r = run["result"]
    regions = CAAPResult(map=torch.zeros(1, 3), targets=r.targets, source_score=r.source_score,
                         context_score=r.context_score, grid=r.grid, settings=r.settings, source_output=r.source_output)
    with pytest.raises(ValueError, match="patch map"):
        write_report(tmp_path, model=run["model"], image_tensor=run["x"], result=regions, image_name="x")


def test_report_dir():
    from caap_lens.report import report_dir

    assert report_dir("out", "dir/My Photo (1).PNG") == Path("out/My_Photo_1")
    assert report_dir("out", "...") == Path("out/image")


def test_top_classes_follow_the_config_activation(run, monkeypatch):
    from caap_lens.report import build_record

    model = run["model"]
    monkeypatch.setattr(model.cfg, "output_activation", "sigmoid")
    record = build_record(model, run["x"], run["result"], image_name="s.png")
    assert record.activation == "sigmoid" and record.to_json()["prediction"]["activation"] == "sigmoid"
    expected = torch.sigmoid(run["logits"][0].double()).topk(5).values.numpy()
    np.testing.assert_allclose([c["score"] for c in record.top_classes], expected, rtol=1e-5)
    assert build_record(model, run["x"], run["result"], image_name="s.png", activation="logits").activation == "logits"


def _normalised(text: str) -> str:
    """A page or map.json without what differs between two writes: the time and plotly's random div ids."""
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", "<created>", text)
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)


@pytest.mark.parametrize("with_profile", [True, False])
def test_the_three_steps_by_hand_give_write_reports_files(run, tmp_path, with_profile):
    from caap_lens.report import build_figures, build_record, render_html, write_report

    model, x, result = run["model"], run["x"], run["result"]
    profile = run["profile"] if with_profile else None
    path = write_report(tmp_path / "a", model=model, image_tensor=x, result=result, profile=profile, image_name="s.png",
                        k=3, command="cmd")
    record = build_record(model, x, result, profile, image_name="s.png", k=3, command="cmd")
    figures = build_figures(record)
    assert list(figures) == ["image", "map", "classes"] + (["lines", "slider", "heat"] if with_profile else [])
    page = render_html(record, figures)
    folder = path.parent
    assert _normalised(page) == _normalised(path.read_text(encoding="utf-8"))
    assert page.count("Plotly.newPlot(") == len(figures) and "Top 3 patches" in page
    assert _normalised(json.dumps(record.to_json(), indent=1)) == _normalised((folder / "map.json").read_text())
    np.testing.assert_array_equal(np.load(folder / "map.npy"), record.map)
    if with_profile:
        np.testing.assert_array_equal(np.load(folder / "profile.npy"), record.profile.maps)
    else:
        assert record.profile is None and not (folder / "profile.npy").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (looked for chromium, google-chrome)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
        "--virtual-time-budget=5000", run["path"].resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.shape[:2] == (900, 1200)
    # A blank (white) page has std 0 and one colour; text alone has no saturated colour. The figures
    # (the red/blue image, the heatmap over it, the bars) must have been drawn by plotly.js.
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    saturated = (pixels.max(-1) - pixels.min(-1)) > 80
    assert saturated.mean() > 0.01, f"only {saturated.mean():.2%} colourful pixels: plots not drawn?"
