import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unimodal.config import ConfigError
from unimodal.data.dataset import DataConfig, augment, build_image_dataset
from unimodal.data.images import BadImageError, load_rgb
from unimodal.data.sources import DataQualityError, ImageFolderSource, SyntheticImageSource, scan_source


def rgb_array(h=20, w=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def encoded(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_modes_convert_to_8bit_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = load_rgb(encoded(rgba), background=(0, 255, 0))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (0, 255, 0) and out.getpixel((0, 0)) == (0, 0, 255)
    half = load_rgb(Image.new("LA", (2, 2), (200, 128)), background=(0, 0, 0))
    assert half.getpixel((0, 0)) == (100, 100, 100)
    assert load_rgb(encoded(Image.new("L", (3, 3), 77))).getpixel((0, 0)) == (77, 77, 77)
    cmyk = load_rgb(encoded(Image.new("CMYK", (3, 3), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_rgb(encoded(pal)).getpixel((2, 2)) == pytest.approx((10, 200, 30), abs=2)
    sixteen = Image.fromarray(np.full((5, 5), 65535 // 2, np.uint16))
    assert sixteen.mode == "I;16"
    assert load_rgb(encoded(sixteen)).getpixel((0, 0)) == (127, 127, 127)
    assert load_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))).getpixel((0, 0)) == (128, 128, 128)


def test_bad_inputs_raise_with_a_reason(tmp_path):
    jpeg, png = encoded(Image.fromarray(rgb_array()), "JPEG"), encoded(Image.fromarray(rgb_array()))
    cases = {"truncated": [jpeg[: len(jpeg) // 2], png[: len(png) // 2]],
             "undecodable": [b"this is not an image", b""],
             "too_small": [Image.new("RGB", (0, 4))],
             "missing": [str(tmp_path / "nope.png")]}
    for reason, sources in cases.items():
        for src in sources:
            with pytest.raises(BadImageError) as err:
                load_rgb(src)
            assert err.value.reason == reason, (reason, err.value)
    with pytest.raises(BadImageError, match="too_small"):
        load_rgb(png, min_size=21)


@pytest.fixture
def messy_folder(tmp_path):
    """ImageNet-style class folders holding every kind of good and bad file."""
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    Image.fromarray(rgb_array(seed=1)).save(root / "cat" / "rgb.png")
    Image.new("L", (40, 24), 90).save(root / "cat" / "gray.jpg")
    Image.new("RGBA", (24, 24), (1, 2, 3, 100)).save(root / "cat" / "rgba.png")
    Image.new("CMYK", (24, 30), (0, 0, 255, 0)).save(root / "cat" / "cmyk.jpg")
    Image.fromarray(rgb_array(seed=2)).convert("P").save(root / "dog" / "palette.png")
    Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100).save(root / "dog" / "deep.png")
    Image.fromarray(rgb_array(37, 23, seed=3)).save(root / "dog" / "nested" / "odd.png")   # odd size: kept
    data = encoded(Image.fromarray(rgb_array(64, 64, seed=4)), "JPEG")
    (root / "dog" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    data = encoded(Image.fromarray(rgb_array(64, 64, seed=5)))
    (root / "dog" / "trunc.png").write_bytes(data[: len(data) // 2])
    (root / "dog" / "fake.png").write_text("not an image at all")
    Image.new("RGB", (3, 3)).save(root / "dog" / "tiny.png")
    (root / "dog" / "copy.png").write_bytes((root / "cat" / "rgb.png").read_bytes())   # duplicate content
    (root / "dog" / "notes.txt").write_text("ignored, not an image extension")
    return root


def test_folder_prescan_counts_each_reason(messy_folder):
    source = ImageFolderSource(messy_folder, class_subfolders=True)
    assert source.classes == ["cat", "dog"] and source.other_files == 1
    logged = []
    report = scan_source(source, min_size=8, log=logged.append)
    assert report.total == 12 and len(report.kept) == 7
    assert report.counts == {"truncated": 2, "undecodable": 1, "too_small": 1, "duplicate": 1}
    assert report.examples["duplicate"] == ["dog/copy.png"]
    assert "kept 7 of 12" in logged[0] and "truncated 2" in logged[0]
    kept_names = {source.record(i).key for i in report.kept}
    assert "dog/nested/odd.png" in kept_names and "cat/rgb.png" in kept_names


def test_max_bad_fraction_stops_before_training(messy_folder):
    cfg = DataConfig(source="folder", path=str(messy_folder), class_subfolders=True, min_size=8, image_size=16,
                     max_bad_fraction=0.3)
    with pytest.raises(DataQualityError, match=r"5 of 12 records \(41.7%\).*max_bad_fraction=0.3"):
        build_image_dataset(cfg)
    ds = build_image_dataset(cfg.replace(max_bad_fraction=0.5))
    assert len(ds) == 7 and ds.report.counts["truncated"] == 2
    items = [ds[i] for i in range(len(ds))]
    assert all(it["pixels"].shape == (3, 16, 16) and it["pixels"].dtype == torch.float32 for it in items)
    assert all(0.0 <= it["pixels"].min() and it["pixels"].max() <= 1.0 for it in items)
    assert sorted(it["label"] for it in items) == [0, 0, 0, 0, 1, 1, 1]


def test_captions_from_metadata_files(tmp_path):
    root = tmp_path / "cap"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.png", "c.png", "sub/d.png"]):
        Image.fromarray(rgb_array(seed=10 + i)).save(root / name)
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file_name": "a.png", "text": "a red square"}, {"file_name": "b.png", "text": "   "}]) + "\n")
    (root / "sub" / "metadata.csv").write_text("file_name,caption\nd.png,\"a cat, sitting\"\n")
    source = ImageFolderSource(root, captions=True)
    report = scan_source(source, require_captions=True)
    assert report.counts == {"empty_caption": 1, "missing_caption": 1}
    ds = build_image_dataset(DataConfig(source="folder", path=str(root), captions=True, image_size=8,
                                        max_bad_fraction=0.5))
    assert sorted(ds[i]["caption"] for i in range(len(ds))) == ["a cat, sitting", "a red square"]
    assert "label" not in ds[0]


def test_datasets_sources(tmp_path):
    datasets = pytest.importorskip("datasets")
    good = [encoded(Image.fromarray(rgb_array(seed=s))) for s in range(3)]
    rows = {"image": [{"bytes": b, "path": None} for b in good] + [{"bytes": b"garbage", "path": None}],
            "text": ["one", "two", "three", "four"], "label": [0, 1, 2, 3]}
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(source="datasets", path=str(tmp_path / "saved"), captions=True, label_column="label",
                     image_size=8, max_bad_fraction=0.3)
    built = build_image_dataset(cfg)
    assert len(built) == 3 and built.report.counts == {"undecodable": 1}
    assert built[2]["caption"] == "three" and built[2]["label"] == 2
    # parquet with image paths relative to the data file
    for i, b in enumerate(good):
        (tmp_path / f"img{i}.png").write_bytes(b)
    datasets.Dataset.from_dict({"image": [f"img{i}.png" for i in range(3)] + ["missing.png"],
                                "caption": ["x", "y", "z", "w"]}).to_parquet(str(tmp_path / "data.parquet"))
    built = build_image_dataset(DataConfig(source="datasets", path=str(tmp_path / "data.parquet"), captions=True,
                                           image_size=8, max_bad_fraction=0.3))
    assert len(built) == 3 and built.report.counts == {"missing": 1} and built[0]["caption"] == "x"


def test_synthetic_source_is_deterministic_and_varied():
    a, b = SyntheticImageSource(4, 32, seed=1, num_classes=3, captions=True), SyntheticImageSource(4, 32, seed=1)
    assert np.array_equal(np.asarray(a.record(2).image), np.asarray(b.record(2).image))
    assert not np.array_equal(np.asarray(a.record(1).image), np.asarray(a.record(2).image))
    assert a.record(2).label == 2 and "blob" in a.record(2).caption
    train = build_image_dataset(DataConfig(synthetic_images=4, image_size=16))
    evald = build_image_dataset(DataConfig(synthetic_images=4, image_size=16), "eval")
    assert not torch.equal(train[0]["pixels"], evald[0]["pixels"])


def test_augmentation_random_crop_is_seeded_and_eval_is_centred():
    img = Image.fromarray(rgb_array(40, 80, seed=7))
    x = augment(img, 20, train=False)
    assert x.shape == (3, 20, 20)
    assert torch.equal(x, augment(img, 20, train=False))
    resized = np.asarray(img.resize((40, 20), Image.Resampling.BICUBIC))
    assert torch.allclose(x, torch.from_numpy(resized[:, 10:30].copy()).permute(2, 0, 1).float() / 255)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    crops = {augment(img, 20, train=True, generator=g(s)).sum().item() for s in range(6)}
    assert len(crops) > 1
    assert torch.equal(augment(img, 20, train=True, generator=g(3)), augment(img, 20, train=True, generator=g(3)))


def test_eval_holdout_and_config_errors(tmp_path):
    root = tmp_path / "few"
    root.mkdir()
    for i in range(6):
        Image.fromarray(rgb_array(seed=20 + i)).save(root / f"{i}.png")
    cfg = DataConfig(source="folder", path=str(root), image_size=8, eval_holdout=2)
    train, evald = build_image_dataset(cfg), build_image_dataset(cfg, "eval")
    assert len(train) == 4 and len(evald) == 2 and not set(train.indices) & set(evald.indices)
    with pytest.raises(ConfigError, match="eval_path or data.eval_holdout"):
        build_image_dataset(cfg.replace(eval_holdout=0), "eval")
    with pytest.raises(ConfigError, match="data.path is required"):
        DataConfig(source="folder")
    with pytest.raises(FileNotFoundError):
        ImageFolderSource(tmp_path / "absent")


def test_scan_cache_and_parallel_scan_agree(messy_folder, tmp_path):
    source = ImageFolderSource(messy_folder, class_subfolders=True)
    serial = scan_source(source, min_size=8)
    assert scan_source(source, min_size=8, workers=2) == serial
    cfg = DataConfig(source="folder", path=str(messy_folder), class_subfolders=True, min_size=8, image_size=8,
                     max_bad_fraction=0.5, scan_cache=str(tmp_path / "scan.json"))
    logged = []
    first = build_image_dataset(cfg, log=logged.append)
    second = build_image_dataset(cfg, log=logged.append)
    assert first.report == second.report == serial
    assert ["reused" in line for line in logged if "prescan" in line] == [False, True]
    Image.new("RGB", (2, 2)).save(messy_folder / "cat" / "new_tiny.png")  # data changed: scan again
    third = build_image_dataset(cfg, log=logged.append)
    assert ["reused" in line for line in logged if "prescan" in line] == [False, True, False]
    assert third.report.counts["too_small"] == 2
