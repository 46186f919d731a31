"""The generation harness with the official GenEval metadata: planning and counts, GenEval's reader
rules, shards, resume, atomic writes, settings checks (a stand-in generator; the real tiny model
runs end to end in test_eval_unified.py)."""
import json
import re
from pathlib import Path

import pytest

from unimodal.config import ConfigError
from unimodal.evaluation import (GenevalLayout, PromptItem, RunOptions, count_check, prompt_seed, read_geneval_items,
                                 run_generation, run_geneval, shard_range)
from unimodal.evaluation.harness import is_finished
from unimodal.evaluation.testing import StandInGenerator, candidate_seed


def _opts(out, **kw):
    return RunOptions(out=str(out), progress=False, **kw)


def _slice(path, tmp_path, lines):
    """A metadata file holding the given official lines (GenEval indices restart at 0 in it)."""
    text = Path(path).read_text().splitlines()
    dst = tmp_path / "slice.jsonl"
    dst.write_text("".join(text[i] + "\n" for i in lines))
    return dst, [text[i] for i in lines]


def _files(out):
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file())


def test_full_run_plans_every_prompt(geneval_metadata_path, tmp_path):
    items = read_geneval_items(geneval_metadata_path)
    assert len(items) == 553 and items[-1].index == 552          # the last prompt is not dropped
    layout = GenevalLayout(tmp_path / "out", images_per_prompt=4)
    planned = [p for it in items for p in layout.benchmark_files(it)]
    assert len(planned) == len(set(planned)) == 553 * 4 == 2212
    counts = count_check(layout, items)
    assert counts["expected"] == 2212 and counts["missing"] == 2212 and not counts["ok"]
    with_selection = GenevalLayout(tmp_path / "out", images_per_prompt=4, n=32)
    assert len(with_selection.expected_files(items[0])) == 2 + 28 + 4
    assert all("rejected" in str(p) for p in with_selection.rejected_files(items[0]))


@pytest.mark.parametrize("total", [553, 1065, 7, 1])
def test_shards_partition_the_index_range(total):
    for k in (1, 2, 3, 8):
        ranges = [shard_range(total, i, k) for i in range(k)]
        covered = [i for r in ranges for i in r]
        assert covered == list(range(total))                     # disjoint, in order, complete
        assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1
    assert shard_range(total, start=0, end=1) == range(0, 1)
    with pytest.raises(ConfigError):
        shard_range(total, 3, 3)
    with pytest.raises(ConfigError):
        shard_range(total, 0, 2, start=0)
    with pytest.raises(ConfigError):
        shard_range(total, start=0, end=total + 1)


def test_layout_follows_geneval_reader_rules(geneval_metadata_path, tmp_path):
    meta, raw = _slice(geneval_metadata_path, tmp_path, [0, 185, 552])     # single, counting, color_attr
    out = tmp_path / "out"
    summary, code = run_geneval(str(meta), _opts(out, n=6), generator=StandInGenerator())
    assert code == 0 and summary["counts"]["ok"] and summary["counts"]["found"] == 12
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["00000", "00001", "00002"]
    for folder, line in zip(folders, raw):
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        assert lines == [line] and json.loads(lines[0]) == json.loads(line)
        samples = sorted(p.name for p in (folder / "samples").iterdir())
        assert samples == ["00000.png", "00001.png", "00002.png", "00003.png"]
        assert all(re.match(r"\d+\.png", s) for s in samples)
        assert sorted(p.name for p in (folder / "rejected").iterdir()) == ["00004.png", "00005.png"]
        rec = json.loads((folder / "candidates.json").read_text())
        ranked = [c["yes_prob"] for c in rec["candidates"]]
        assert ranked == sorted(ranked, reverse=True) and sorted(c["index"] for c in rec["candidates"]) == list(range(6))
        assert [c["file"] for c in rec["candidates"]][:4] == [f"samples/{s}" for s in samples]
        assert rec["prompt_seed"] == prompt_seed(0, int(folder.name))
    assert "evaluate_images.py" in summary["scorer_commands"][0] and "summary_scores.py" in summary["scorer_commands"][1]
    assert summary["args"]["metadata"] == str(meta) and summary["args"]["n"] == 6 and "commit" in summary["git"]


def test_shards_and_resume_neither_duplicate_nor_collide(geneval_metadata_path, tmp_path):
    meta, _ = _slice(geneval_metadata_path, tmp_path, range(7))
    whole = tmp_path / "whole"
    run_geneval(str(meta), _opts(whole), generator=StandInGenerator())
    sharded, gen = tmp_path / "sharded", StandInGenerator()
    codes = [run_geneval(str(meta), _opts(sharded, shard=i, num_shards=3), generator=gen)[1] for i in (2, 0, 1)]
    assert codes == [0, 0, 0]
    assert sorted(gen.calls) == sorted(it.prompt for it in read_geneval_items(meta))   # each prompt once
    images = [f for f in _files(whole) if f.endswith(".png")]
    assert images == [f for f in _files(sharded) if f.endswith(".png")]
    for f in images:                                             # the same bytes, whoever made them
        assert (whole / f).read_bytes() == (sharded / f).read_bytes()

    again = StandInGenerator()                                   # resume: nothing left to do
    stamps = {f: (whole / f).stat().st_mtime_ns for f in _files(whole) if f.endswith(".png")}
    summary, code = run_geneval(str(meta), _opts(whole), generator=again)
    assert code == 0 and again.calls == [] and summary["run"]["skipped"] == 7
    assert stamps == {f: (whole / f).stat().st_mtime_ns for f in stamps}

    # A killed run: one prompt lost an image and holds a temporary; only it is regenerated.
    (whole / "00003" / "samples" / "00002.png").unlink()
    (whole / "00003" / "samples" / ".00002.png.tmp123").write_bytes(b"partial")
    again = StandInGenerator()
    summary, code = run_geneval(str(meta), _opts(whole), generator=again)
    items = read_geneval_items(meta)
    assert code == 0 and again.calls == [items[3].prompt]
    assert not list((whole / "00003" / "samples").glob(".*"))
    assert (whole / "00003" / "samples" / "00002.png").read_bytes() == (sharded / "00003" / "samples" / "00002.png").read_bytes()


def test_count_check_fails_unsharded_runs_only(geneval_metadata_path, tmp_path):
    meta, _ = _slice(geneval_metadata_path, tmp_path, range(4))
    out = tmp_path / "out"
    assert run_geneval(str(meta), _opts(out, end=2), generator=StandInGenerator())[1] == 0   # a shard: 8 of 16 is fine
    summary, code = run_geneval(str(meta), _opts(out, check_only=True))
    assert code == 1 and summary["counts"]["expected"] == 16 and summary["counts"]["found"] == 8
    assert run_geneval(str(meta), _opts(out), generator=StandInGenerator())[1] == 0
    assert run_geneval(str(meta), _opts(out, check_only=True))[1] == 0
    stray = out / "00009" / "samples"                                    # a folder the scorer would also read
    stray.mkdir(parents=True)
    (stray / "00000.png").write_bytes(b"")
    summary, code = run_geneval(str(meta), _opts(out, check_only=True))
    assert code == 1 and summary["counts"]["found"] == 17


def test_other_settings_are_refused(geneval_metadata_path, tmp_path):
    meta, _ = _slice(geneval_metadata_path, tmp_path, range(2))
    out = tmp_path / "out"
    run_geneval(str(meta), _opts(out, seed=1), generator=StandInGenerator())
    with pytest.raises(ConfigError, match="seed"):
        run_geneval(str(meta), _opts(out, seed=2), generator=StandInGenerator())
    with pytest.raises(ConfigError, match="images per prompt"):
        _opts(out, n=2, keep=4)


def test_prompt_seed_reproduces_an_image(geneval_metadata_path, tmp_path):
    items = read_geneval_items(geneval_metadata_path)
    out = tmp_path / "out"
    run_geneval(str(geneval_metadata_path), _opts(out, start=40, end=42), generator=StandInGenerator())
    rec = json.loads((out / "00041" / "candidates.json").read_text())
    c = rec["candidates"][2]
    assert rec["prompt_seed"] == prompt_seed(0, 41) and c["seed"] == candidate_seed(rec["prompt_seed"], items[41].prompt, c["index"])
    alone = StandInGenerator().generate([items[41].prompt], [prompt_seed(0, 41)], n=4, keep=4)[0][c["index"]]
    saved = (out / "00041" / c["file"]).read_bytes()
    tmp = tmp_path / "again.png"
    alone.image.save(tmp, format="PNG")
    assert tmp.read_bytes() == saved
    assert prompt_seed(0, 41) != prompt_seed(0, 42) and prompt_seed(0, 41) != prompt_seed(1, 41)


def test_run_generation_validates_generator_output(tmp_path):
    class Short(StandInGenerator):
        def generate(self, prompts, seeds, *, n, keep, decode_rejected=False):
            return [c[:-1] for c in super().generate(prompts, seeds, n=n, keep=keep)]

    item = PromptItem(0, "00000", "a photo of a cat", {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                                                       "prompt": "a photo of a cat"})
    layout = GenevalLayout(tmp_path, 4, 4)
    with pytest.raises(RuntimeError, match="candidates"):
        run_generation([item], layout, Short(), seed=0, n=4, keep=4, judge=None, progress=False)
    assert not is_finished(layout, item)


def test_eval_command_registers_every_benchmark():
    import argparse

    from unimodal.commands import eval as eval_command

    parser = argparse.ArgumentParser(prog="unimodal")
    eval_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "geneval", "--metadata", "m.jsonl", "--out", "o", "--n", "32", "--shard", "1",
                              "--num-shards", "4"])
    assert (args.benchmark, args.n, args.keep, args.shard, args.num_shards) == ("geneval", 32, 4, 1, 4)
    args = parser.parse_args(["eval", "scaling", "--out", "o"])
    assert args.benchmark == "scaling" and args.keep == 1 and args.ns == "1,2,4,8,16"
    for name in ("dpg", "shapes"):
        assert parser.parse_args(["eval", name, "--out", "o"] + (["--prompts", "p"] if name == "dpg" else [])).func


def test_bad_inputs_give_one_line_errors(tmp_path):
    from unimodal.evaluation import read_dpg_items

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "single_object", "prompt": "a cat"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl"):
        read_geneval_items(bad)
    with pytest.raises(FileNotFoundError):
        read_geneval_items(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError):
        read_dpg_items(tmp_path / "no-prompts")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "1.txt").write_text("  ")
    with pytest.raises(ConfigError, match="empty"):
        read_dpg_items(tmp_path / "p")
    one = tmp_path / "one.jsonl"
    one.write_text('{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}\n')
    with pytest.raises(FileNotFoundError, match="nothing was generated"):
        run_geneval(str(one), _opts(tmp_path / "none", check_only=True))
