import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitsae_tui.engine import synthetic
from vitsae_tui.engine.config import DataConfig
from vitsae_tui.engine.data import DataError, iterate_batches, load_dataset, load_rgb, normalize


def concepts_on(concept_map: np.ndarray, where: np.ndarray, family: str) -> set[str]:
    return {
        n.split(":")[1]
        for k, n in enumerate(synthetic.CONCEPTS)
        if n.startswith(family + ":") and (concept_map[k] & where).any()
    }


def test_synthetic_is_deterministic_and_the_label_is_the_large_objects_shape_and_warmth():
    a = synthetic.draw_images(7, 0, 12)
    b = synthetic.draw_images(7, 0, 12)
    c = synthetic.draw_images(8, 0, 12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    images, labels, maps = a
    assert images.shape == (12, 224, 224, 3) and images.dtype == np.uint8
    assert maps.shape == (12, len(synthetic.CONCEPTS), 6, 6)
    for label, concept_map in zip(labels, maps):
        large = concept_map[synthetic.CONCEPTS.index("size:large")]
        classes = {
            synthetic.class_of(shape, colour)
            for shape in concepts_on(concept_map, large, "shape")
            for colour in concepts_on(concept_map, large, "colour")
        }
        assert label in classes
    assert len(synthetic.CLASS_NAMES) >= 10


def test_no_concept_is_the_same_thing_as_being_on_an_object():
    """Small objects of independent shape and colour: most images show two shapes, and every shape concept
    covers well under the object patches (one object per image made them identical)."""
    _, _, maps = synthetic.draw_images(11, 0, 100)
    shapes = [k for k, n in enumerate(synthetic.CONCEPTS) if n.startswith("shape:")]
    on_object = maps[:, shapes].any(1)  # (N, 6, 6)
    assert np.mean([len(concepts_on(m, np.ones((6, 6), bool), "shape")) >= 2 for m in maps]) >= 0.5
    for k in shapes:
        share = maps[:, k][on_object].mean()  # fraction of object patches that show this shape
        assert 0.1 < share < 0.5, (synthetic.CONCEPTS[k], share)


def test_concept_maps_follow_the_pixels():
    image, _label, concept_map = synthetic.draw_image(3, 5)
    objects = concept_map[[k for k, n in enumerate(synthetic.CONCEPTS) if n.startswith("shape:")]].any(0)
    background = concept_map[[k for k, n in enumerate(synthetic.CONCEPTS) if n.startswith("background:")]].any(0)
    assert objects.any() and background.any()
    assert (objects & background).sum() < objects.sum()
    # every object patch shows a colour and a size, and no colour or size shows off the objects
    for family in ("colour:", "size:"):
        rows = concept_map[[k for k, n in enumerate(synthetic.CONCEPTS) if n.startswith(family)]]
        assert np.array_equal(rows.any(0), objects)


def test_patch_coverage_on_a_known_mask():
    mask = np.zeros((224, 224), dtype=bool)
    mask[:, :112] = True
    cover = synthetic.patch_coverage(mask)
    assert np.allclose(cover[:, :3], 1.0) and np.allclose(cover[:, 3:], 0.0)


def test_synthetic_split_is_cached_and_batched(workspace):
    cfg = DataConfig(n_train=20, n_val=8)
    train = load_dataset(workspace, cfg, "train")
    val = load_dataset(workspace, cfg, "val")
    assert len(train) == 20 and len(val) == 8
    assert not np.array_equal(train.images_u8[0].numpy(), val.images_u8[0].numpy())
    again = load_dataset(workspace, cfg, "train")
    assert np.array_equal(again.images_u8.numpy(), train.images_u8.numpy())
    batches = list(iterate_batches(train, np.arange(20), 8))
    assert [len(b[0]) for b in batches] == [8, 8, 4]
    images = normalize(batches[0][0])
    assert images.dtype.is_floating_point and images.shape == (8, 3, 224, 224)


def _save(path, image, fmt, **kw):
    image.save(path, fmt, **kw)
    return path


@pytest.fixture
def odd_folder(tmp_path):
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
    _save(good / "rgb.jpg", rgb, "JPEG")
    _save(good / "cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    _save(good / "sixteen.png", Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)), "PNG")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    _save(good / "palette.png", palette, "PNG", transparency=0)
    _save(good / "rgba.png", rgb.convert("RGBA"), "PNG")
    _save(good / "tiny.png", Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    (bad / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    # a PNG header that claims 20000 x 20000 pixels: refused before decoding
    huge = Image.new("L", (20000, 20000))
    _save(bad / "bomb.png", huge, "PNG", optimize=False, compress_level=9)
    return tmp_path


def test_odd_images_are_decoded_and_bad_ones_skipped(odd_folder):
    for path in sorted((odd_folder / "good").iterdir()):
        image = load_rgb(path)
        assert image is not None and image.mode == "RGB", path.name
    for path in sorted((odd_folder / "bad").iterdir()):
        assert load_rgb(path) is None, path.name


def test_folder_dataset_counts_unreadable_images(odd_folder):
    cfg = DataConfig(dataset=str(odd_folder), val_fraction=0.5)
    everything = load_dataset(None, cfg, "all")
    assert everything.class_names == ("bad", "good")
    assert len(everything) == 10
    seen_ok = 0
    seen_bad = 0
    for images, _labels, ok in iterate_batches(everything, np.arange(len(everything)), 4):
        assert images.shape[1:] == (3, 224, 224)
        seen_ok += int(ok.sum())
        seen_bad += int((~ok).sum())
    assert (seen_ok, seen_bad) == (6, 4)
    train = load_dataset(None, cfg, "train")
    val = load_dataset(None, cfg, "val")
    assert sorted(train.paths + val.paths) == sorted(everything.paths)


def test_flat_folder_is_unlabelled(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    dataset = load_dataset(None, DataConfig(dataset=str(tmp_path)), "all")
    assert dataset.class_names == () and list(dataset.labels()) == [-1]


def test_missing_and_empty_folders_give_one_sentence(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(None, DataConfig(dataset=str(tmp_path / "nope")), "train")
    with pytest.raises(DataError, match="no images"):
        load_dataset(None, DataConfig(dataset=str(tmp_path)), "train")


def test_offline_imagenette_gives_a_clear_message(workspace, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    with pytest.raises(DataError, match="could not download Imagenette.*--dataset synthetic"):
        load_dataset(workspace, DataConfig(dataset="imagenette"), "train")


def test_a_folder_keeps_its_split_wherever_it_lies(tmp_path):
    import shutil

    from PIL import Image

    from vitsae_tui.engine.config import DataConfig
    from vitsae_tui.engine.data import load_folder

    first = tmp_path / "first" / "data"
    for label in ("a", "b"):
        (first / label).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(first / label / f"{i}.png")
    moved = tmp_path / "elsewhere" / "deeper" / "copy"
    shutil.copytree(first, moved)

    def val_files(root):
        dataset = load_folder(DataConfig(dataset=str(root), val_fraction=0.5), "val")
        return sorted(str(Path(dataset.source(i)).relative_to(root)) for i in range(len(dataset)))

    assert val_files(first) == val_files(moved) and 0 < len(val_files(first)) < 24


def test_a_file_name_that_is_not_utf8_is_one_more_image(workspace, tmp_path):
    import json
    import os

    root = os.fsencode(tmp_path / "odd-names")
    for folder, name in ((b"cat\xff", b"\xfe.png"), (b"cat\xff", b"ok.png"), (b"dog", b"fine.png")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(os.fsdecode(os.path.join(root, folder, name)), "PNG")
    dataset = load_dataset(workspace, DataConfig(dataset=os.fsdecode(root)), "all")
    assert len(dataset) == 3 and dataset.class_names == ("cat\\xff", "dog")
    sources = [dataset.source(i) for i in range(3)]
    assert any(source.endswith("cat\\xff/\\xfe.png") for source in sources)
    json.dumps(sources).encode("utf-8")  # what the manifest stores: valid UTF-8
    images, _labels, ok = next(iterate_batches(dataset, np.arange(3), 3))
    assert ok.all() and images.shape == (3, 3, 224, 224)
