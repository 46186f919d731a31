"""A corpus of odd and broken image files through every image loader: `unimodal caption` and
`verify`, the training data (load_rgb, the folder source's prescan and dataset) and the web UI's
upload check. Odd but valid files load as RGB of their upright size; broken ones are refused with
one line naming the file (the CLI: one stderr line, exit 1, no traceback).
"""
import collections
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from unimodal.chat.backend import ChatBackend
from unimodal.chat.settings import ServeLimits
from unimodal.cli import main
from unimodal.data.dataset import DataConfig, build_image_dataset
from unimodal.data.images import BadImageError, load_rgb
from unimodal.data.sources import ImageFolderSource, scan_source
from unimodal.unified.testing import tiny_model


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature and an IHDR claiming width x height (8-bit RGB), then IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6                                   # Orientation: rotate 90 degrees clockwise to view
    return _encoded(_noise(40, 20), "JPEG", exif=exif.tobytes())


def _palette_alpha() -> bytes:
    img = Image.new("P", (12, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    return _encoded(img, "PNG", transparency=0)       # index 0 (red) is transparent: white after loading


def _animated() -> bytes:
    frames = [Image.new("RGB", (16, 12), c) for c in ((0, 200, 0), (200, 0, 0))]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (file bytes, expected): (width, height) after loading upright as RGB, or the refusal reason.
CORPUS = {
    "cmyk.jpg": (lambda: _encoded(Image.new("CMYK", (24, 18), (0, 255, 255, 0)), "JPEG"), (24, 18)),
    "sixteen_bit.png": (lambda: _encoded(Image.fromarray(np.full((10, 14), 40000, np.uint16)), "PNG"), (14, 10)),
    "palette_alpha.png": (_palette_alpha, (12, 10)),
    "one_pixel.png": (lambda: _encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1)),
    "animated.gif": (_animated, (16, 12)),
    "exif_rotated.jpg": (_exif_rotated, (20, 40)),
    "picture.webp": (lambda: _encoded(_noise(20, 16), "WEBP"), (20, 16)),
    "picture.tiff": (lambda: _encoded(_noise(20, 16), "TIFF"), (20, 16)),
    "picture.bmp": (lambda: _encoded(_noise(20, 16), "BMP"), (20, 16)),
    "jpeg_named.png": (lambda: _encoded(_noise(22, 18), "JPEG"), (22, 18)),
    "truncated.png": (lambda: _cut(_encoded(_noise(64, 64), "PNG")), "truncated"),
    "truncated.jpg": (lambda: _cut(_encoded(_noise(64, 64), "JPEG")), "truncated"),
    "zero_bytes.png": (lambda: b"", "undecodable"),
    "not_an_image.png": (lambda: b"just some text, no pixels\n", "undecodable"),
    "bomb.png": (lambda: _png_header(100_000, 100_000), "too_large"),          # past PIL's own bomb check
    "big_header.png": (lambda: _png_header(9000, 9000), "too_large"),          # past ours only
    "strip.png": (lambda: _encoded(Image.new("RGB", (20_000, 8), (1, 2, 3)), "PNG"), "extreme_aspect"),
}
GOOD = [name for name, (_, want) in CORPUS.items() if isinstance(want, tuple)]
BAD = [name for name, (_, want) in CORPUS.items() if isinstance(want, str)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "images"
    root.mkdir()
    for name, (make, _) in CORPUS.items():
        (root / name).write_bytes(make())
    return root


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, num_inference_steps=2).eval()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs") / "model"
    model.save_pretrained(d)
    return d


def _cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_corpus_through_load_rgb(corpus):
    for name, (_, want) in CORPUS.items():
        if isinstance(want, tuple):
            img = load_rgb(corpus / name)
            assert img.mode == "RGB" and img.size == want, name
        else:
            with pytest.raises(BadImageError) as err:
                load_rgb(corpus / name)
            assert err.value.reason == want and name in str(err.value) and "\n" not in str(err.value), name
    assert load_rgb(corpus / "palette_alpha.png").getpixel((5, 5)) == (255, 255, 255)    # transparent -> white
    assert load_rgb(corpus / "palette_alpha.png").getpixel((0, 0)) == (0, 0, 255)
    assert load_rgb(corpus / "animated.gif").getpixel((3, 3)) == (0, 200, 0)            # the first frame
    r, g, b = load_rgb(corpus / "cmyk.jpg").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    assert load_rgb(corpus / "sixteen_bit.png").getpixel((0, 0)) == (156, 156, 156)      # 40000 / 257


def test_corpus_through_training_data(corpus):
    source = ImageFolderSource(corpus)
    report = scan_source(source)
    assert report.total == len(CORPUS) and len(report.kept) == len(GOOD)
    assert report.counts == dict(collections.Counter(CORPUS[name][1] for name in BAD))
    ds = build_image_dataset(DataConfig(source="folder", path=str(corpus), image_size=8, max_bad_fraction=0.6))
    assert sorted(source.record(i).key for i in ds.indices) == sorted(GOOD)
    assert all(ds[i]["pixels"].shape == (3, 8, 8) for i in range(len(ds)))


def _argv(command: str, path, model_dir) -> list[str]:
    return [command, str(path)] + (["a red square"] if command == "verify" else []) + ["--model", str(model_dir)]


@pytest.mark.parametrize("command", ["caption", "verify"])
def test_broken_files_are_one_line_from_the_cli(corpus, model_dir, command, capsys):
    for name in BAD:
        rc, out, err = _cli(_argv(command, corpus / name, model_dir), capsys)
        assert rc == 1 and out == "", (name, rc, out)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"unimodal {command}: error: {CORPUS[name][1]}: {corpus / name} "), err
    rc, _, err = _cli(_argv(command, corpus / "gone.png", model_dir), capsys)
    assert rc == 2 and err == f"unimodal {command}: error: no such image: {corpus / 'gone.png'}\n"
    latent = corpus.parent / "cut_latent.safetensors"
    latent.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"latent\": ")        # a header cut short
    rc, _, err = _cli(_argv(command, latent, model_dir), capsys)
    assert rc == 1 and err.count("\n") == 1 and f"{latent} is not a complete safetensors file" in err, err
    with pytest.raises(BadImageError):                   # --debug: the traceback instead of one line
        main(["--debug"] + _argv(command, corpus / "truncated.png", model_dir))


def test_odd_files_are_captioned_and_verified(corpus, model_dir, capsys):
    rc, out, err = _cli(["caption", *[str(corpus / n) for n in GOOD], "--model", str(model_dir), "--device", "cpu",
                         "--max-new-tokens", "1", "--json"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert [json.loads(line)["input"] for line in out.splitlines()] == [str(corpus / n) for n in GOOD]
    rc, out, err = _cli(["verify", str(corpus / "exif_rotated.jpg"), "a red square", "--model", str(model_dir),
                         "--device", "cpu"], capsys)
    assert rc == 0 and 0.0 <= json.loads(out)["yes_prob"] <= 1.0


def test_web_upload_check_names_the_upload_not_the_server_path(corpus, model):
    backend = ChatBackend(model, limits=ServeLimits(max_upload_bytes=2**20))
    for name in GOOD:
        backend.check_upload(corpus / name)
    for name in BAD:
        with pytest.raises(BadImageError) as err:
            backend.check_upload(corpus / name)
        assert name in str(err.value) and str(corpus) not in str(err.value), str(err.value)
    reply = backend.send(backend.new_conversation(), "what is this?", str(corpus / "truncated.png"),
                         num_inference_steps=2)
    assert "truncated.png is truncated" in reply.error and str(corpus) not in reply.error
    assert str(corpus) not in json.dumps(reply.messages)
