"""Finetune data: every source kind loads, bad records are counted per reason, the bad-fraction stop,
validation split, self-captioning."""
import json

import pytest
from PIL import Image

from unimodal.config import ConfigError
from unimodal.data.sources import DataQualityError
from unimodal.finetune import build_finetune_data, detect_kind, expand_shards, load_finetune_config, resolve_source
from unimodal.finetune.sources import TarShardSource, expand_braces
from unimodal.finetune.testing import (tiny_base_model, toy_records, write_folder, write_jsonl_paths, write_parquet,
                                       write_shards)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base_model(tmp_path_factory.mktemp("base") / "model")


def _cfg(base, data, out, *overrides, self_caption=False):
    return load_finetune_config("configs/finetune_tiny.yaml", list(overrides), data=str(data), model=str(base),
                                out=str(out), self_caption=self_caption)


def _captions(ds):
    return sorted(ds[i]["caption"] for i in range(len(ds)))


@pytest.mark.parametrize("kind", ["folder_jsonl", "folder_csv", "parquet_bytes", "jsonl_paths", "tar_txt", "tar_json"])
def test_every_source_kind_loads(tmp_path, base, kind):
    recs = toy_records(10)
    if kind.startswith("folder"):
        spec, expect = write_folder(tmp_path / "d", recs, metadata=kind.split("_")[1]), "folder"
    elif kind == "parquet_bytes":
        spec, expect = write_parquet(tmp_path / "d" / "train.parquet", recs), "files"
    elif kind == "jsonl_paths":
        spec, expect = write_jsonl_paths(tmp_path / "d" / "train.jsonl", recs), "files"
    else:
        write_shards(tmp_path / "d", recs, per_shard=4, caption_ext=kind.split("_")[1])
        spec, expect = tmp_path / "d" / "shard-{000000..000002}.tar", "tar"
    assert detect_kind(str(spec)) == expect
    data = build_finetune_data(_cfg(base, spec, tmp_path / "run", "data.val_fraction=0.2"))
    assert len(data.train) == 8 and len(data.val) == 2
    assert sorted(_captions(data.train) + _captions(data.val)) == sorted(c for _, c in recs)
    item = data.train[0]
    assert tuple(item["pixels"].shape) == (3, 32, 32)   # the model's encoder size, read from its config.json
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["train"]["source"]["kind"] == expect and report["split"] == {"train": 8, "val": 2}


def test_shard_specs(tmp_path):
    write_shards(tmp_path, toy_records(6), per_shard=2)
    assert expand_braces("a{0..2}.{x,y}") == ["a0.x", "a0.y", "a1.x", "a1.y", "a2.x", "a2.y"]
    assert expand_braces("s{008..010}") == ["s008", "s009", "s010"]
    assert len(expand_shards(str(tmp_path))) == 3
    assert len(expand_shards(str(tmp_path / "shard-*.tar"))) == 3
    assert [p.name for p in expand_shards(str(tmp_path / "shard-{000000,000002}.tar"))] == ["shard-000000.tar",
                                                                                            "shard-000002.tar"]
    assert len(TarShardSource(str(tmp_path / "shard-00000[01].tar"))) == 4
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_shards(str(tmp_path / "shard-{000000..000005}.tar"))


def test_bad_records_are_counted_per_reason_and_reported(tmp_path, base):
    recs = toy_records(12)
    folder = write_folder(tmp_path / "d", recs[:10] + [(recs[0][0], "a copy"), (recs[10][0], "   ")])
    (folder / "img_03.png").write_bytes((folder / "img_03.png").read_bytes()[:60])          # truncated
    (folder / "img_04.png").write_bytes(b"not an image at all")                             # undecodable
    Image.new("CMYK", (32, 32), (0, 255, 0, 0)).save(folder / "img_05.jpg")                # other mode: kept
    (folder / "img_06.png").rename(folder / "orphan.png")            # no caption row; img_06's row: missing_file
    out = tmp_path / "run"
    data = build_finetune_data(_cfg(base, folder, out, "data.max_bad_fraction=0.5", "data.val_fraction=0"))
    report = json.loads((out / "data_report.json").read_text())["train"]["scan"]
    assert report["counts"] == {"duplicate": 1, "empty_caption": 1, "missing_caption": 2, "missing_file": 1,
                                "truncated": 1, "undecodable": 1}
    assert report["total"] == 14 and report["kept"] == 7 and len(data.train) == 7 and data.val is None
    with pytest.raises(DataQualityError, match="max_bad_fraction"):
        build_finetune_data(_cfg(base, folder, out, "data.max_bad_fraction=0.3"))
    assert json.loads((out / "data_report.json").read_text())["train"]["scan"]["skipped"] == 7  # written before stopping


def test_corrupt_and_truncated_shards(tmp_path, base):
    paths = write_shards(tmp_path / "s", toy_records(8), per_shard=4)
    paths[1].write_bytes(paths[1].read_bytes()[:2600])     # cut inside the second shard
    src, kind = resolve_source(str(tmp_path / "s"))
    assert kind == "tar" and src.unreadable_shards and 4 <= len(src) < 8
    gz = tmp_path / "gz.tar"
    import gzip

    gz.write_bytes(gzip.compress(paths[0].read_bytes()))
    with pytest.raises(ValueError, match="uncompressed"):
        resolve_source(str(gz))


def test_missing_captions_need_self_caption(tmp_path, base):
    folder = write_folder(tmp_path / "d", [(d, None) for d, _ in toy_records(4)], metadata="none")
    with pytest.raises(ConfigError, match="--self-caption"):
        build_finetune_data(_cfg(base, folder, tmp_path / "run"))


def test_self_caption_writes_and_reuses_a_captions_file(tmp_path, base, capsys):
    recs = toy_records(6)
    folder = write_folder(tmp_path / "d", [(d, c if i < 2 else None) for i, (d, c) in enumerate(recs)])
    cfg = _cfg(base, folder, tmp_path / "run", "data.val_fraction=0", "data.caption_max_tokens=4",
               "data.max_bad_fraction=1.0", self_caption=True)
    logs = []
    data = build_finetune_data(cfg, log=logs.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "self_captions.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"img_{i:02d}.png" for i in range(2, 6)]
    kept = {data.train.source.record(i).key: data.train.source.record(i).caption for i in data.train.indices}
    assert kept["img_00.png"] == recs[0][1]                 # given captions stay
    for r in rows:                                           # generated ones are used (empty ones are skipped)
        assert kept.get(r["file_name"], "") == r["text"]
    logs.clear()
    build_finetune_data(cfg, log=logs.append)
    assert any("self-captions reused" in line for line in logs)
