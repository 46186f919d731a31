import errno
import json
import os

import numpy as np
import pytest
import torch

from unimodal.train import checkpoint as ckpt
from unimodal.train.checkpoint import (NoSpaceError, latest_checkpoint, list_checkpoints, load_checkpoint, resume_run,
                                       save_checkpoint)
from unimodal.train.config import TrainConfig
from unimodal.utils.distributed import DistInfo, seed_everything
from unimodal.train.ema import EMA
from unimodal.train.engine import TrainEngine
from unimodal.train.logging import RunLogger, check_finite, save_resolved_config
from unimodal.train.loop import infinite_loader


class Toy(torch.utils.data.Dataset):
    accepts_sample_seed = True

    def __len__(self):
        return 13

    def __getitem__(self, key):
        i, seed = key
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(4, generator=g) + i, "index": i}


def train(run_dir, total_steps, stop_after=None, ckpt_every=2):
    """A miniature stage loop in the shape the real stages use; returns {step: loss}."""
    cfg = TrainConfig(run_dir=str(run_dir), total_steps=total_steps, batch_size=3, grad_accum=2, lr=1e-2,
                      warmup_steps=2, ema_decay=0.9, ckpt_every=ckpt_every, keep_checkpoints=2, log_every=1)
    dist = DistInfo()
    seed_everything(cfg.seed, dist.rank)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    engine = TrainEngine(model, cfg, dist=dist)
    ema = EMA(engine.module, cfg.ema_decay)
    log = RunLogger(cfg.run_dir, dist, tensorboard=False)
    save_resolved_config(cfg.run_dir, cfg, log)
    step, position, _ = resume_run(cfg.run_dir, {"model": engine}, ema, log)
    loader = infinite_loader(Toy(), cfg.batch_size, seed=cfg.seed, start_position=position, dist=dist)
    losses = {}
    batches = iter(loader)
    while step < total_steps:
        engine.set_lr(step)
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            noise = torch.randn(cfg.batch_size, 1)  # global RNG: must replay after a resume
            loss = (engine(batch["x"]) - noise).pow(2).mean()
            check_finite(loss, step)
            engine.backward(loss)
            out = engine.step()
        step += 1
        ema.update(engine.module)
        losses[step] = loss.item()
        log.metrics(step, loss=loss, lr=engine.lrs()[0], grad_norm=out.grad_norm)
        if step % cfg.ckpt_every == 0:
            save_checkpoint(cfg.run_dir, step, {"model": engine},
                            {"step": step, "data_position": loader.position, "ema": ema.state_dict(),
                             "config": cfg.to_dict()}, keep=cfg.keep_checkpoints)
        if stop_after is not None and step == stop_after:
            break  # the process is "killed" here
    log.close()
    return losses, ema


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight, ema_a = train(tmp_path / "a", 8)
    first, _ = train(tmp_path / "b", 8, stop_after=5)  # killed after step 5; the last checkpoint is step 4
    second, ema_b = train(tmp_path / "b", 8)
    assert set(second) == {5, 6, 7, 8}
    for s in range(1, 9):
        assert (first.get(s) if s <= 4 else second[s]) == straight[s], s
    assert torch.equal(ema_a.shadow["0.weight"], ema_b.shadow["0.weight"])
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [6, 8]  # pruned to keep_checkpoints
    rows_b = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows_b == list(range(1, 9))  # step 5 of the killed run was rewound, not duplicated
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert {"loss", "lr", "grad_norm", "peak_mem_gb", "time"} <= set(rows[0])
    assert (tmp_path / "a" / "train.log").read_text().count("loss=") == 8
    assert TrainConfig.load_json(tmp_path / "a" / "config.json").total_steps == 8


def test_metrics_hold_each_step_once_after_kills_before_the_first_checkpoint(tmp_path):
    straight, _ = train(tmp_path / "a", 4)
    train(tmp_path / "b", 4, stop_after=1)                  # killed before its first checkpoint (step 2)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "lo')                          # and killed in the middle of a row
    train(tmp_path / "b", 4, stop_after=3)                  # from scratch again; killed after checkpoint 2
    again, _ = train(tmp_path / "b", 4)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [straight[s] for s in range(1, 5)]


def test_rng_state_round_trip():
    seed_everything(7)
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(2), __import__("random").random())
    seed_everything(99)
    ckpt.restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(2), __import__("random").random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def _engine():
    torch.manual_seed(0)
    return TrainEngine(torch.nn.Linear(3, 2), TrainConfig())


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    engine = _engine()
    first = save_checkpoint(tmp_path, 10, {"m": engine}, {"step": 10})
    assert latest_checkpoint(tmp_path) == first

    def crash(src, dst):
        raise KeyboardInterrupt("killed between the temporary write and the rename")

    monkeypatch.setattr(ckpt, "replace_directory", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20})
    assert not (tmp_path / "checkpoints" / ".tmp_step_00000020").exists()   # the partial write is removed
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(latest_checkpoint(tmp_path), {"m": engine}) == {"step": 10}
    monkeypatch.undo()
    (tmp_path / "checkpoints" / ".tmp_step_00000020").mkdir()               # as a SIGKILL mid-write leaves it
    again = save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20}, keep=1)  # the retry cleans up
    assert latest_checkpoint(tmp_path) == again and not first.exists()
    assert not (tmp_path / "checkpoints" / ".tmp_step_00000020").exists()


BIG = {"blob": torch.zeros(3 * 2**20 // 4)}     # 3 MB of extra state: sizes worth printing in MB


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")])
def test_disk_full_mid_write_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch, error):
    engine = _engine()
    first = save_checkpoint(tmp_path, 10, {"m": engine}, {"step": 10, **BIG})
    real_save, calls = torch.save, []

    def fill_the_disk(obj, f, *args, **kwargs):             # the engine state lands, the next file does not
        calls.append(f)
        if len(calls) > 1:
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_the_disk)
    frees = iter([8 * 2**20, 2**19])                       # enough before the write, 0.5 MB left after it
    monkeypatch.setattr(ckpt, "_free_bytes", lambda folder: next(frees))
    with pytest.raises(NoSpaceError, match=r"^no space left on \S+checkpoints: need ~4 MB, have 0 MB; ") as err:
        save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20, **BIG})
    assert "\n" not in str(err.value) and err.value.__cause__ is error
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]
    monkeypatch.undo()
    assert load_checkpoint(latest_checkpoint(tmp_path), {"m": engine})["step"] == 10


def test_other_write_errors_pass_through_and_leave_no_partial_folder(tmp_path, monkeypatch):
    engine = _engine()
    first = save_checkpoint(tmp_path, 10, {"m": engine}, {"step": 10})
    monkeypatch.setattr(ckpt, "capture_rng_state", lambda: {"lock": __import__("threading").Lock()})
    with pytest.raises(Exception, match="pickle"):          # plenty of space: not reported as a full disk
        save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_too_little_free_space_stops_before_writing(tmp_path, monkeypatch):
    engine = _engine()
    first = save_checkpoint(tmp_path, 10, {"m": engine}, {"step": 10, **BIG})
    monkeypatch.setattr(ckpt, "_free_bytes", lambda folder: 2 * 2**20)
    with pytest.raises(NoSpaceError, match=r"need ~4 MB, have 2 MB"):
        save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20, **BIG})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]
    monkeypatch.setattr(ckpt, "_free_bytes", lambda folder: 5 * 2**20)
    assert save_checkpoint(tmp_path, 20, {"m": engine}, {"step": 20, **BIG}, keep=1).name == "step_00000020"


def test_incomplete_and_foreign_directories_are_ignored(tmp_path):
    engine = _engine()
    good = save_checkpoint(tmp_path, 3, {"m": engine}, {"step": 3})
    (tmp_path / "checkpoints" / "step_00000009").mkdir()          # no COMPLETE marker
    (tmp_path / "checkpoints" / "step_final").mkdir()
    os.makedirs(tmp_path / "checkpoints" / "notes")
    assert latest_checkpoint(tmp_path) == good
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "checkpoints" / "step_00000009", {"m": engine})
    with pytest.raises(ValueError, match="holds engines"):
        load_checkpoint(good, {"other": engine})


def test_load_restores_model_and_optimizer(tmp_path):
    engine = _engine()
    engine.backward(engine(torch.randn(4, 3)).sum())
    engine.step()
    path = save_checkpoint(tmp_path, 1, {"m": engine}, {})
    fresh = _engine()
    load_checkpoint(path, {"m": fresh})
    assert torch.equal(fresh.module.weight, engine.module.weight)
    assert fresh.optimizer_steps == 1
    st_a, st_b = engine.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert torch.equal(st_a[0]["exp_avg"], st_b[0]["exp_avg"])
    wrong = TrainEngine(torch.nn.Linear(3, 3), TrainConfig())
    with pytest.raises(Exception, match="shape mismatch"):
        load_checkpoint(path, {"m": wrong})


def test_check_finite_raises_one_line():
    check_finite(torch.tensor(1.0), 3)
    from unimodal.train.logging import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="step 12"):
        check_finite(torch.tensor(float("nan")), 12)


def test_only_rank_zero_writes_logs(tmp_path):
    other = RunLogger(tmp_path / "r1", DistInfo(rank=1, world_size=2), tensorboard=False)
    other.info("hidden")
    other.metrics(1, loss=0.5)
    assert other.progress(10).disable
    other.close()
    assert not (tmp_path / "r1").exists()
    main = RunLogger(tmp_path / "r0", DistInfo(), tensorboard=False)
    row = main.metrics(3, loss=torch.tensor(0.25), note="x")
    main.close()
    assert row["loss"] == 0.25 and json.loads((tmp_path / "r0" / "metrics.jsonl").read_text())["note"] == "x"
