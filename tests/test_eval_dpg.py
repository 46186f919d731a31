"""DPG-Bench runner: every official prompt id planned, 2x2 grids of the given tile size named by id,
an images-only output folder (the scorer reads every file in it), shards and resume."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import DPG_PROMPTS
from unimodal.config import ConfigError
from unimodal.evaluation import DpgLayout, RunOptions, read_dpg_items, run_dpg, tile_grid
from unimodal.evaluation.testing import StandInGenerator


@pytest.fixture
def dpg_prompts():
    if not DPG_PROMPTS.is_dir():
        pytest.skip(f"official DPG-Bench prompts not found at {DPG_PROMPTS}")
    return DPG_PROMPTS


def _subset(src, dst, names):
    dst.mkdir()
    for name in names:
        (dst / f"{name}.txt").write_bytes((src / f"{name}.txt").read_bytes())
    return dst


def test_every_prompt_id_is_planned(dpg_prompts, tmp_path):
    items = read_dpg_items(dpg_prompts)
    ids = {p.stem for p in dpg_prompts.glob("*.txt")}
    assert len(items) == len(ids) == 1065 and {it.name for it in items} == ids
    assert [it.index for it in items] == list(range(1065))
    layout = DpgLayout(tmp_path / "out", tile_size=512)
    files = [p for it in items for p in layout.benchmark_files(it)]
    assert len(set(files)) == 1065 and all(p.parent == tmp_path / "out" for p in files)
    assert items[0].name == "0" and items[1].name == "1" and items[10].name == "10"   # numeric order first
    assert all(it.prompt == it.prompt.strip() and it.prompt for it in items)


def test_grid_geometry(dpg_prompts, tmp_path):
    names = ["0", "COCOval2014000000010363", "299"]
    prompts = _subset(dpg_prompts, tmp_path / "prompts", names)
    out = tmp_path / "dpg"
    gen = StandInGenerator(size=16)
    summary, code = run_dpg(str(prompts), RunOptions(out=str(out), n=6, progress=False), tile_size=24, generator=gen)
    assert code == 0 and summary["counts"]["ok"] and summary["tile_size"] == 24
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in names)   # images only
    assert "--resolution 24 --pic-num 4" in summary["scorer_commands"][0]
    items = {it.name: it for it in read_dpg_items(prompts)}
    for name in names:
        grid = np.asarray(Image.open(out / f"{name}.png"))
        assert grid.shape == (48, 48, 3)
        rec = json.loads((tmp_path / "dpg_meta" / "candidates" / f"{name}.json").read_text())
        assert rec["prompt"] == items[name].prompt and len(rec["candidates"]) == 6
        cands = {c.index: c for c in StandInGenerator(16).generate([items[name].prompt], [rec["prompt_seed"]],
                                                                   n=6, keep=4)[0]}
        crops = [(0, 0), (24, 0), (0, 24), (24, 24)]                 # the scorer's crop order
        for entry, (x, y) in zip(rec["candidates"][:4], crops):
            tile = cands[entry["index"]].image.resize((24, 24), Image.Resampling.BICUBIC)
            assert np.array_equal(grid[y:y + 24, x:x + 24], np.asarray(tile))
        rejected = sorted(p.name for p in (tmp_path / "dpg_meta" / "rejected" / name).iterdir())
        assert rejected == ["00004.png", "00005.png"]
    # resume: nothing regenerated; a second shard layout keeps to its own range
    again = StandInGenerator(16)
    assert run_dpg(str(prompts), RunOptions(out=str(out), n=6, progress=False), tile_size=24, generator=again)[1] == 0
    assert again.calls == []


def test_dpg_shards_and_options(dpg_prompts, tmp_path):
    prompts = _subset(dpg_prompts, tmp_path / "prompts", ["1", "2", "3", "4", "5"])
    out, gen = tmp_path / "dpg", StandInGenerator(8)
    for i in range(2):
        assert run_dpg(str(prompts), RunOptions(out=str(out), shard=i, num_shards=2, progress=False),
                       generator=gen)[1] == 0
    assert sorted(gen.calls) == sorted(it.prompt for it in read_dpg_items(prompts))
    assert {Image.open(p).size for p in out.iterdir()} == {(16, 16)}            # native tile size 8
    assert run_dpg(str(prompts), RunOptions(out=str(out), check_only=True, progress=False))[1] == 0
    with pytest.raises(ConfigError, match="4 images"):
        run_dpg(str(prompts), RunOptions(out=str(out), keep=2, progress=False), generator=gen)


def test_tile_grid_order():
    tiles = [Image.new("RGB", (4, 4), c) for c in ("red", "green", "blue", "white")]
    g = np.asarray(tile_grid(tiles, 2, 6))
    assert g.shape == (12, 12, 3)
    assert tuple(g[0, 0]) == (255, 0, 0) and tuple(g[0, 11]) == (0, 128, 0)
    assert tuple(g[11, 0]) == (0, 0, 255) and tuple(g[11, 11]) == (255, 255, 255)
