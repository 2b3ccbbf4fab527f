"""Tests for caap_lens.data: Fashion-MNIST loading and synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest

from caap_lens.data import FASHION_MNIST_CLASSES, SceneConfig, SceneSet, build_scenes, load_fashion_mnist
from caap_lens.data import fashion_mnist as fm
from caap_lens.data import scenes as sc

ARRAYS = ("images", "labels", "item_classes", "item_boxes", "item_masks", "item_indices")


def _real_data_available() -> bool:
    try:
        fm._load_shared("test", None)
    except FileNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(
    not _real_data_available(),
    reason="Fashion-MNIST files not found: apt-get install dataset-fashion-mnist or set CAAP_LENS_FASHION_MNIST",
)


def _fake_source(seed: int, n_per_class: int = 3, side: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Random blob glyphs, ``n_per_class`` per class, each different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    glyphs, labels = [], []
    for c in range(10):
        for _ in range(n_per_class):
            cy, cx = rng.uniform(side * 0.3, side * 0.7, 2)
            r = rng.uniform(side * 0.2, side * 0.45)
            blob = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / r, 0, 1) * rng.uniform(150, 255)
            glyphs.append(blob.astype(np.uint8))
            labels.append(c)
    return np.stack(glyphs), np.array(labels)


def _resized_mask(glyph: np.ndarray, side: int, threshold: float) -> np.ndarray:
    rows, cols = sc._resize_matrix(glyph.shape[0], side), sc._resize_matrix(glyph.shape[1], side)
    alpha = np.clip(rows @ (glyph / 255.0) @ cols.T, 0, 1)
    return alpha > threshold * alpha.max()


def _check_consistency(s: SceneSet) -> None:
    n, k_max = s.item_classes.shape
    size = s.config.image_size
    assert s.images.shape == (n, size, size, 3) and s.images.dtype == np.uint8
    assert s.labels.shape == (n, 10) and s.labels.dtype == np.float32
    assert s.item_boxes.shape == (n, k_max, 4) and s.item_boxes.dtype == np.int64
    assert s.item_masks.shape == (n, k_max, size, size) and s.item_masks.dtype == bool
    for i in range(n):
        valid = s.item_classes[i] >= 0
        k = int(valid.sum())
        assert s.config.n_items[0] <= k <= s.config.n_items[1]
        assert valid[:k].all() and not valid[k:].any()  # padding only at the end
        classes = s.item_classes[i, :k]
        assert len(set(classes.tolist())) == k  # distinct classes
        expected = np.zeros(10, np.float32)
        expected[classes] = 1
        np.testing.assert_array_equal(s.labels[i], expected)
        assert (s.item_boxes[i, k:] == -1).all() and (s.item_indices[i, k:] == -1).all()
        assert not s.item_masks[i, k:].any()
        for j in range(k):
            x0, y0, x1, y1 = s.item_boxes[i, j]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            s_lo, s_hi = s.config.item_size
            assert x1 - x0 == y1 - y0 and s_lo <= x1 - x0 <= s_hi
            mask = s.item_masks[i, j]
            assert mask.any()
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()
            np.testing.assert_array_equal(s.class_mask(i, int(classes[j])), mask)
        if not s.config.allow_overlap:
            boxes = s.item_boxes[i, :k]
            for a in range(k):
                for b in range(a + 1, k):
                    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
                    assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0
        absent = [c for c in range(10) if c not in classes]
        assert not s.class_mask(i, absent[0]).any()


def test_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "t-shirt" and FASHION_MNIST_CLASSES[9] == "ankle boot"


def test_determinism_and_seeds():
    src = _fake_source(0)
    a = build_scenes("train", 20, seed=3, source=src)
    b = build_scenes("train", 20, seed=3, source=src)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = build_scenes("train", 20, seed=4, source=src)
    d = build_scenes("test", 20, seed=3, source=src)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images, d.images)  # the split is folded into the seed
    assert len(a) == 20 and a.seed == 3 and a.split == "train" and a.class_names == FASHION_MNIST_CLASSES


@pytest.mark.parametrize("config", [
    SceneConfig(),
    SceneConfig(n_items=(1, 4), item_size=(12, 20)),
    SceneConfig(image_size=48, n_items=(3, 3), item_size=(16, 24), allow_overlap=True),
])
def test_structure_masks_boxes_labels(config):
    _check_consistency(build_scenes("train", 40, seed=1, config=config, source=_fake_source(1)))


def test_masks_match_source_glyphs():
    """Each mask is the thresholded resized glyph named by item_indices, at its box."""
    src = _fake_source(2)
    s = build_scenes("test", 20, seed=0, source=src)
    for i in range(len(s)):
        for j in np.flatnonzero(s.item_classes[i] >= 0):
            x0, y0, x1, y1 = s.item_boxes[i, j]
            idx = s.item_indices[i, j]
            assert src[1][idx] == s.item_classes[i, j]
            expected = _resized_mask(src[0][idx], x1 - x0, s.config.mask_threshold)
            np.testing.assert_array_equal(s.item_masks[i, j, y0:y1, x0:x1], expected)


def test_items_drawn_where_masks_say():
    """Outside the masks' boxes the image is the background; under high alpha it clearly differs."""
    cfg = SceneConfig()
    src = _fake_source(3)
    by_class = [np.flatnonzero(src[1] == c) for c in range(10)]
    rng = np.random.default_rng(0)
    for _ in range(30):
        classes, boxes, masks, indices, background, layers = sc._render_scene(rng, cfg, src[0], by_class)
        image = sc._compose(background, layers)
        bg8 = np.rint(background * 255).astype(np.int64)
        diff = np.abs(image.astype(np.int64) - bg8).max(axis=-1)
        in_box = np.zeros(image.shape[:2], bool)
        for (x0, y0, x1, y1), idx in zip(boxes, indices):
            in_box[y0:y1, x0:x1] = True
            m = sc._resize_matrix(28, x1 - x0)
            high = np.clip(m @ (src[0][idx] / 255.0) @ m.T, 0, 1) >= 0.5
            # brightest item channel >= 0.7, background <= 0.5 -> >= 0.1 * 255 at alpha 0.5
            assert (diff[y0:y1, x0:x1][high] >= 25).all()
        assert (diff[~in_box] == 0).all()
        assert masks.any(axis=0)[in_box].any() and not masks.any(axis=0)[~in_box].any()


def test_solid_glyphs_fill_their_masks():
    """Fully opaque square glyphs: mask == box and the colour inside is uniform, unlike the textured background."""
    src = (np.full((10, 28, 28), 255, np.uint8), np.arange(10))
    s = build_scenes("train", 10, seed=5, source=src)
    for i in range(len(s)):
        for j in np.flatnonzero(s.item_classes[i] >= 0):
            x0, y0, x1, y1 = s.item_boxes[i, j]
            assert s.item_masks[i, j].sum() == (x1 - x0) * (y1 - y0)
            patch = s.images[i, y0:y1, x0:x1].reshape(-1, 3).astype(int)
            assert (patch.max(0) - patch.min(0)).max() <= 1
        outside = s.images[i][~s.item_masks[i].any(0)].astype(int)
        assert (outside.max(0) - outside.min(0)).max() > 10


def test_split_selects_source(monkeypatch):
    """Without `source`, each split loads only its own Fashion-MNIST split."""
    fakes = {"train": _fake_source(10), "test": _fake_source(11)}
    calls = []

    def fake_load(split, root):
        calls.append(split)
        return fakes[split]

    monkeypatch.setattr(sc, "_load_shared", fake_load)
    for split in ("train", "test"):
        s = build_scenes(split, 5, seed=0)
        glyphs = fakes[split][0]
        for i, j in zip(*np.nonzero(s.item_classes >= 0)):
            x0, y0, x1, y1 = s.item_boxes[i, j]
            expected = _resized_mask(glyphs[s.item_indices[i, j]], x1 - x0, s.config.mask_threshold)
            np.testing.assert_array_equal(s.item_masks[i, j, y0:y1, x0:x1], expected)
    assert calls == ["train", "test"]


def test_save_load_roundtrip(tmp_path):
    cfg = SceneConfig(n_items=(1, 3), allow_overlap=True)
    s = build_scenes("test", 12, seed=7, config=cfg, source=_fake_source(4))
    path = s.save(tmp_path / "scenes")
    assert path.name == "scenes.npz" and path.exists()
    t = SceneSet.load(path)
    for name in ARRAYS:
        a, b = getattr(s, name), getattr(t, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert (t.config, t.class_names, t.seed, t.split) == (s.config, s.class_names, s.seed, s.split)
    assert isinstance(t.config.n_items, tuple)
    np.testing.assert_array_equal(t.class_mask(0, t.class_names[t.item_classes[0, 0]]), s.item_masks[0, 0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(split="val", n=5), "split must be one of"),
        (dict(split="train", n=0), "n must be a positive integer"),
        (dict(split="train", n=-3), "n must be a positive integer"),
        (dict(split="train", n=5, seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_build_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_scenes(**kwargs, source=_fake_source(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image_size=24), r"image_size=24 is too small for items of up to 32px"),
        (dict(image_size=38), r"image_size=38 is too small to fit 3 non-overlapping items"),
        (dict(n_items=(2, 11)), r"n_items must be .* <= 10"),
        (dict(n_items=(0, 2)), r"n_items must be"),
        (dict(item_size=(30, 20)), r"item_size must be"),
        (dict(background_max=0.8), r"background_max < item_value\[0\]"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SceneConfig(**kwargs)


def test_source_with_too_few_classes():
    images, labels = _fake_source(0)
    keep = labels < 2
    with pytest.raises(ValueError, match="only 2 labels"):
        build_scenes("train", 3, source=(images[keep], labels[keep]))


def test_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CAAP_LENS_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist("train")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "CAAP_LENS_FASHION_MNIST" in msg
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_scenes("test", 2)
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("validation")


def test_idx_reader_plain_and_gz(tmp_path):
    """A tiny hand-written IDX set, raw and gzipped, loads through `root`."""
    import gzip

    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([3, 9], np.uint8)
    img_bytes = bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">u4").tobytes() + images.tobytes()
    lbl_bytes = bytes([0, 0, 8, 1]) + np.array([2], ">u4").tobytes() + labels.tobytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(img_bytes)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lbl_bytes))
    x, y = load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [3, 9])
    assert y.dtype == np.int64 and x.dtype == np.uint8


@needs_data
def test_real_fashion_mnist_loads():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    x[0, 0, 0] = 1  # callers get a writable copy
    assert fm._load_shared("test", None)[0][0, 0, 0] == 0


@needs_data
def test_real_scenes_use_their_own_split():
    """Masks of train scenes match train glyphs; those of test scenes match test glyphs."""
    for split in ("train", "test"):
        glyphs, labels = fm._load_shared(split, None)
        s = build_scenes(split, 25, seed=0)
        _check_consistency(s)
        for i, j in zip(*np.nonzero(s.item_classes >= 0)):
            idx = s.item_indices[i, j]
            assert 0 <= idx < len(glyphs) and labels[idx] == s.item_classes[i, j]
            x0, y0, x1, y1 = s.item_boxes[i, j]
            expected = _resized_mask(glyphs[idx], x1 - x0, s.config.mask_threshold)
            np.testing.assert_array_equal(s.item_masks[i, j, y0:y1, x0:x1], expected)


def test_removal_images_differ_only_inside_the_removed_item():
    """Scene without item k == scene outside k's box, and == the background inside it (no overlap)."""
    s = build_scenes("test", 12, seed=3, removals=True, source=_fake_source(3))
    plain = build_scenes("test", 12, seed=3, source=_fake_source(3))
    np.testing.assert_array_equal(s.images, plain.images)  # asking for removals changes no scene
    assert s.removal_images.shape == (12, 3, 64, 64, 3)
    for i in range(len(s)):
        for j in range(3):
            removed = s.removal_images[i, j]
            if s.item_classes[i, j] < 0:
                assert not removed.any()
                continue
            x0, y0, x1, y1 = s.item_boxes[i, j]
            box = np.zeros((64, 64), bool)
            box[y0:y1, x0:x1] = True
            np.testing.assert_array_equal(removed[~box], s.images[i][~box])
            changed = (removed != s.images[i]).any(-1)
            assert changed[s.item_masks[i, j]].mean() > 0.9 and not changed[~box].any()


def test_removal_images_round_trip(tmp_path):
    s = build_scenes("test", 3, seed=1, removals=True, source=_fake_source(3))
    back = SceneSet.load(s.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(back.removal_images, s.removal_images)
    assert SceneSet.load(build_scenes("test", 3, seed=1, source=_fake_source(3)).save(tmp_path / "p")).removal_images is None


def test_class_groups_label_each_item_once():
    groups = ((0, 2, 4, 6, 3), (1,), (5,), (7,), (8,), (9,))
    cfg = SceneConfig(class_groups=groups, group_names=("top", "trouser", "sandal", "sneaker", "bag", "boot"))
    src = _fake_source(3)
    s = build_scenes("train", 40, seed=2, config=cfg, source=src)
    assert s.labels.shape == (40, 6) and s.class_names[0] == "top"
    label_of = cfg.label_of_class()
    for i in range(len(s)):
        present = s.item_classes[i][s.item_classes[i] >= 0]
        assert len(set(present)) == len(present)  # one item per label
        assert set(present) == set(np.flatnonzero(s.labels[i]))
        for j in np.flatnonzero(s.item_classes[i] >= 0):
            assert label_of[src[1][s.item_indices[i, j]]] == s.item_classes[i, j]
    back = SceneSet.load(s.save("/tmp/groups_scenes.npz"))
    assert back.config == cfg and back.class_names == s.class_names


@pytest.mark.parametrize("groups", [((0, 1), (1, 2)), ((0,), ()), ((11,),)])
def test_bad_class_groups(groups):
    with pytest.raises(ValueError, match="class_groups"):
        SceneConfig(class_groups=groups)
