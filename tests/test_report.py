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


def test_html_reads_the_folders_plotly_js_offline(run):
    from plotly.offline import get_plotlyjs

    page = run["path"].read_text(encoding="utf-8")
    plotly_js = get_plotlyjs()
    assert (run["out"] / "plotly.min.js").read_text(encoding="utf-8") == plotly_js  # one copy, next to the reports
    assert plotly_js not in page and len(page) < 1_000_000
    sources = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']([^\"']+)", page, flags=re.I)
    assert sources == ["../plotly.min.js"]  # relative, local: no CDN
    assert "cdn.plot.ly" not in page and "https://" not in page and "http://" not in page
    assert page.count("Plotly.newPlot(") == 6  # image, map, classes, lines, slider, heatmap
    for text in ("resid_pre", "mean", "logit", "[1, 3)", "my scene.png", "Top 5 patches", "Settings"):
        assert text in page, text


def test_inline_report_is_one_self_contained_file(run, tmp_path):
    from plotly.offline import get_plotlyjs

    from caap_lens.report import write_report

    path = write_report(tmp_path, model=run["model"], image_tensor=run["x"], result=run["result"],
                        image_name="one.png", plotly_js="inline")
    page = path.read_text(encoding="utf-8")
    assert page.count(get_plotlyjs()) == 1 and not (tmp_path / "plotly.min.js").exists()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)
    with pytest.raises(ValueError, match="plotly_js"):
        write_report(tmp_path, model=run["model"], image_tensor=run["x"], result=run["result"], image_name="o.png",
                     plotly_js="cdn")


def test_plotly_js_is_written_once_per_folder(run, tmp_path):
    from caap_lens.report import write_report

    kwargs = dict(model=run["model"], image_tensor=run["x"], result=run["result"])
    write_report(tmp_path, image_name="a.png", **kwargs)
    js = tmp_path / "plotly.min.js"
    os.utime(js, ns=(1_000_000_000, 1_000_000_000))  # an old time stamp: a rewrite would change it
    second = write_report(tmp_path, image_name="b.png", **kwargs)
    assert js.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "plotly.min.js"]
    assert "../plotly.min.js" in second.read_text(encoding="utf-8")


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
    page = render_html(record, figures, plotly_js="../plotly.min.js")
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


def test_report_shows_the_effect_by_default_and_raw_when_asked(run, tmp_path):
    from caap_lens.report import build_figures, build_record, render_html

    model, x, result = run["model"], run["x"], run["result"]
    context = float(result.context_score[0])
    record = build_record(model, x, result, run["profile"], image_name="e.png")
    assert record.values == "effect" and record.value_name == "logit − context"
    effect = result.map[0].numpy() - context
    np.testing.assert_allclose(record.shown, effect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(record.shown, result.effect[0].numpy(), rtol=1e-5, atol=1e-6)
    figures = build_figures(record)
    heat = figures["map"].data[1]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), effect, rtol=1e-5, atol=1e-6)
    assert heat.colorbar.title.text == "logit − context" and heat.zmin == -heat.zmax  # white = no effect
    layer_effect = run["profile"].maps[:, 0].numpy() - run["profile"].context_score[:, 0].numpy()[:, None, None]
    np.testing.assert_allclose(np.asarray(figures["slider"].data[1].z, dtype=float), layer_effect[0], rtol=1e-5,
                               atol=1e-6)
    page = render_html(record, figures)
    assert "0 (white) is no effect" in page and "logit − context" in page and "Value (raw)" not in page
    best = record.top_patches[0]
    assert best["effect"] == pytest.approx(best["value"] - context)
    assert f"<td>{best['effect']:.4g}</td>" in page  # the table lists effects
    data = record.to_json()
    assert data["values"] == "effect"
    np.testing.assert_allclose(np.array(data["effect"]), effect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(data["map"]), result.map[0].numpy(), rtol=1e-6)  # the map as computed

    raw = build_record(model, x, result, run["profile"], image_name="e.png", values="raw")
    assert raw.value_name == "logit (raw)"
    figures = build_figures(raw)
    heat = figures["map"].data[1]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), result.map[0].numpy(), rtol=1e-6)
    assert heat.colorbar.title.text == "logit (raw)"
    page = render_html(raw, figures)
    assert "Value (raw)" in page and f"The context alone scores {context:.4g}" in page
    assert f"<td>{best['value']:.4g}</td>" in page
    with pytest.raises(ValueError, match="'effect'"):
        build_record(model, x, result, image_name="e.png", values="relative")


def test_weights_origin_in_header_and_json_and_random_weights_note(run, monkeypatch, tmp_path):
    from caap_lens.report import RANDOM_WEIGHTS_NOTE, build_record, write_report

    model = run["model"]
    line = "random init (timm default; no pretrained weights loaded)"
    monkeypatch.setattr(model.cfg, "weights", line, raising=False)
    monkeypatch.setattr(model.cfg, "weights_kind", "random", raising=False)
    path = write_report(tmp_path, model=model, image_tensor=run["x"], result=run["result"], image_name="w.png",
                        notes=["an extra note"])
    page = path.read_text(encoding="utf-8")
    assert f"<tr><th>Weights</th><td>{line}</td></tr>" in page
    assert "class='note'" in page and "the predictions and the map mean nothing" in page and "an extra note" in page
    assert "(random weights: this prediction means nothing)" in page
    data = json.loads((path.parent / "map.json").read_text())
    assert data["model"]["weights"] == line and data["model"]["weights_kind"] == "random"
    assert data["notes"] == [RANDOM_WEIGHTS_NOTE, "an extra note"]
    monkeypatch.setattr(model.cfg, "weights", "checkpoint /tmp/my.safetensors", raising=False)
    monkeypatch.setattr(model.cfg, "weights_kind", "checkpoint", raising=False)
    record = build_record(model, run["x"], run["result"], image_name="w.png")
    assert record.notes == [] and record.weights == "checkpoint /tmp/my.safetensors"


def test_index_links_every_report_and_keeps_earlier_rows(run, tmp_path):
    from caap_lens.report import build_record, index_entry, save_report, write_index

    model, x, result = run["model"], run["x"], run["result"]
    entries = []
    for name in ("a.png", "b.png"):
        record = build_record(model, x, result, image_name=name)
        entries.append(index_entry(record, save_report(record, tmp_path), tmp_path))
    index = write_index(tmp_path, entries[:1], failed=[{"image": "broken.png", "error": "cannot read broken.png"}])
    write_index(tmp_path, entries[1:])  # a second run into the same folder keeps a's row
    page = index.read_text(encoding="utf-8")
    assert "href='a/report.html'" in page and "href='b/report.html'" in page
    assert entries[0]["prediction"].split(",")[0] in page and "Model: " in page
    assert all((tmp_path / e["report"]).is_file() for e in entries)
    first = write_index(tmp_path, entries[:1], failed=[{"image": "broken.png", "error": "cannot read"}])
    assert "broken.png" in first.read_text(encoding="utf-8")
