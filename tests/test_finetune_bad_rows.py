"""Finetune metadata rows that cannot be used: every row is counted in data_report.json under its
own reason, none outside the folder is opened, over-long captions are cut to the model's positions,
and data.max_bad_fraction decides whether the run goes on."""
import json

import pytest

from unimodal.config import ConfigError
from unimodal.data import sources
from unimodal.data.sources import DataQualityError
from unimodal.finetune import build_finetune_data, load_finetune_config
from unimodal.finetune.data import caption_cutter
from unimodal.finetune.testing import tiny_base_model, toy_records, write_folder
from unimodal.unified.model import UnifiedModel

LONG = ("a red square on blue " * 1000)[:20_000]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture
def folder(tmp_path):
    recs = toy_records(11)
    root = write_folder(tmp_path / "data", recs[:8])                                # 8 good rows
    for i, (data, _) in enumerate(recs[8:], start=8):
        (root / f"img_{i:02d}.png").write_bytes(data)
    (tmp_path / "outside.png").write_bytes(recs[0][0])                              # a real image, outside
    rows = [{"file_name": "img_08.png", "text": ""},                                # empty caption
            {"file_name": "img_09.png", "caption_typo": "a red square"},            # no caption column
            {"file_name": "img_10.png", "text": LONG},                              # 20,000 characters
            {"file_name": "gone.png", "text": "a red square"},                      # no such file
            {"file_name": "../outside.png", "text": "a red square"},                # escaping paths
            {"file_name": str(tmp_path / "outside.png"), "text": "a red square"},
            {"file_name": "../../etc/passwd", "text": "a red square"},
            {"text": "a row without a file name"}]
    with open(root / "metadata.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return root


def _cfg(base, data, out, *overrides):
    return load_finetune_config("configs/finetune_tiny.yaml", ["data.val_fraction=0", *overrides], data=str(data),
                                model=str(base), out=str(out))


def test_every_row_is_counted_and_long_captions_are_cut(base, folder, tmp_path, monkeypatch):
    opened = []
    real_load = sources.load_rgb
    monkeypatch.setattr(sources, "load_rgb", lambda image, **kw: opened.append(image) or real_load(image, **kw))
    out = tmp_path / "run"
    cfg = _cfg(base, folder, out, "data.max_bad_fraction=0.48")
    data = build_finetune_data(cfg)

    report = json.loads((out / "data_report.json").read_text())
    scan = report["train"]["scan"]
    assert scan["counts"] == {"bad_row": 2, "empty_caption": 1, "escaping_path": 3, "missing_caption": 1,
                              "missing_file": 1}
    assert scan["total"] == 17 and scan["kept"] == 9 and scan["skipped"] == 8       # 11 images + 6 rows without one
    assert scan["bad_fraction"] == round(8 / 17, 6)
    assert scan["truncated_captions"] == 1 and scan["truncated_examples"] == ["img_10.png"]
    assert sorted(scan["examples"]["escaping_path"]) == sorted(
        ["metadata.jsonl line 13 (../outside.png)", f"metadata.jsonl line 14 ({tmp_path / 'outside.png'})",
         "metadata.jsonl line 15 (../../etc/passwd)"])
    assert all(str(p).startswith(str(folder)) for p in opened)            # nothing outside the folder was read

    limit = report["max_caption_tokens"]
    assert limit == caption_cutter(cfg).max_tokens and 0 < limit < 1024
    captions = {data.train.source.record(i).key: data.train.source.record(i).caption for i in data.train.indices}
    cut = captions["img_10.png"]
    model = UnifiedModel.from_pretrained(base)
    assert LONG.startswith(cut) and len(model.chat.text(cut)) == limit
    longest = model.chat.encode(model.chat.judge_chat(0, cut, answer=False))
    assert len(longest.input_ids) <= model.llm.config.max_position_embeddings
    assert len(data.train) == 9 and data.train[data.train.indices.index(10)]["caption"] == cut


def test_max_bad_fraction_stops_above_it_after_writing_the_report(base, folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataQualityError, match=r"8 of 17 records \(47.1%\).*max_bad_fraction=0.47"):
        build_finetune_data(_cfg(base, folder, out, "data.max_bad_fraction=0.47"))
    assert json.loads((out / "data_report.json").read_text())["train"]["scan"]["counts"]["escaping_path"] == 3


def test_caption_limit_setting(base, folder, tmp_path):
    out = tmp_path / "run"
    data = build_finetune_data(_cfg(base, folder, out, "data.max_bad_fraction=0.48", "data.max_caption_tokens=3"))
    report = json.loads((out / "data_report.json").read_text())
    assert report["max_caption_tokens"] == 3 and report["train"]["scan"]["truncated_captions"] == 9
    chat = UnifiedModel.from_pretrained(base).chat
    assert all(len(chat.text(data.train[i]["caption"])) == 3 for i in range(len(data.train)))
    with pytest.raises(ConfigError, match="max_caption_tokens=5000 is more than the model's 1024 positions allow"):
        build_finetune_data(_cfg(base, folder, out, "data.max_bad_fraction=0.48", "data.max_caption_tokens=5000"))
