"""Two-process runs on gloo: DeepSpeed ZeRO-2 and plain DDP must reproduce the single-process run on
the same global batch, with gradient accumulation, and a ZeRO checkpoint must resume exactly.

The test launches this file under torchrun; the `__main__` block is the worker.
"""
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_torchrun

MICRO, ACCUM, WORLD, STEPS = 2, 2, 2, 3


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(MICRO * ACCUM * WORLD, 6, generator=g), torch.randn(MICRO * ACCUM * WORLD, 2, generator=g)


def train_cfg():
    from unimodal.train.config import TrainConfig

    return TrainConfig(lr=1e-2, batch_size=MICRO, grad_accum=ACCUM, grad_clip=0.5, warmup_steps=2, total_steps=10,
                       weight_decay=0.1)


def rank_slice(rank, micro_index):
    # global batch = [accumulation micro step][rank][sample]: what each rank sees at micro step i
    start = (micro_index * WORLD + rank) * MICRO
    return slice(start, start + MICRO)


def run_steps(engine, rank, world, steps):
    losses = []
    for step in steps:
        engine.set_lr(step)
        x, y = global_batch(step)
        step_loss = 0.0
        for i in range(ACCUM):
            sl = rank_slice(rank, i) if world > 1 else slice(i * MICRO * WORLD, (i + 1) * MICRO * WORLD)
            loss = (engine(x[sl]) - y[sl]).pow(2).mean()
            engine.backward(loss)
            out = engine.step()
            step_loss += loss.item() / ACCUM
        losses.append({"loss": step_loss, "grad_norm": out.grad_norm})
    return losses


def worker(out_dir):
    from unimodal.train.checkpoint import load_checkpoint, save_checkpoint
    from unimodal.utils.distributed import all_reduce_mean, cleanup, init_distributed
    from unimodal.train.engine import TrainEngine

    dist = init_distributed(device="cpu")
    results = {}
    for mode in ("ddp", "zero2"):  # one launch for both: starting processes dominates the run time
        ds_config = str(Path(__file__).resolve().parents[1] / "configs/deepspeed/zero2.json") if mode == "zero2" else None
        engine = TrainEngine(make_model(), train_cfg(), deepspeed_config=ds_config, dist=dist)
        rows = run_steps(engine, dist.rank, dist.world_size, range(STEPS - 1))
        path = save_checkpoint(Path(out_dir) / mode, STEPS - 1, {"model": engine}, {"step": STEPS - 1})
        rows += run_steps(engine, dist.rank, dist.world_size, [STEPS - 1])
        load_checkpoint(path, {"model": engine})
        replay = run_steps(engine, dist.rank, dist.world_size, [STEPS - 1])
        losses = [all_reduce_mean(torch.tensor(r["loss"])).item() for r in rows + replay]
        results[mode] = {"losses": losses, "grad_norms": [r["grad_norm"] for r in rows]}
        engine.close()
    # a module kept outside the engines (e.g. a discriminator) gets its gradients averaged by hand
    from unimodal.utils.distributed import average_gradients
    from unimodal.train.logging import NonFiniteLossError, check_finite

    side = torch.nn.Linear(2, 2)
    side.weight.grad = torch.full_like(side.weight, dist.rank + 1.0)  # bias has no grad on purpose
    average_gradients(side)
    results["averaged"] = [side.weight.grad.mean().item(), side.bias.grad.abs().sum().item()]
    try:  # a NaN on rank 1 only must stop rank 0 too, or it would hang in the next collective
        check_finite(torch.tensor(float("nan") if dist.rank == 1 else 1.0), 5)
    except NonFiniteLossError as e:
        results["nonfinite"] = str(e)
    if dist.is_main:
        (Path(out_dir) / "result.json").write_text(json.dumps(results))
    cleanup()


def reference():
    from unimodal.train.engine import TrainEngine

    engine = TrainEngine(make_model(), train_cfg())
    return run_steps(engine, 0, 1, range(STEPS))


@pytest.mark.slow
@pytest.mark.deepspeed
def test_two_processes_match_single_process_ddp_and_zero2(tmp_path):
    results, ref = run_torchrun(__file__, tmp_path, WORLD, timeout=300), reference()
    for mode in ("ddp", "zero2"):
        got = results[mode]
        assert got["losses"][:STEPS] == pytest.approx([r["loss"] for r in ref], rel=1e-5), mode
        assert got["grad_norms"] == pytest.approx([r["grad_norm"] for r in ref], rel=1e-4), mode
        assert got["losses"][STEPS] == pytest.approx(got["losses"][STEPS - 1], rel=1e-6), mode  # exact resume
    zero_dir = tmp_path / "zero2" / "checkpoints" / f"step_{STEPS - 1:08d}" / "engines" / "model"
    assert len(list(zero_dir.glob("*optim_states.pt"))) == WORLD  # optimizer state partitioned per rank
    assert results["averaged"] == [1.5, 0.0]
    assert results["nonfinite"] == "non-finite loss on another rank at step 5; stopping"


if __name__ == "__main__":
    worker(sys.argv[1])
