"""`finetune`: the finetune stage (`unimodal.train.pretrain.run_stage`) plus what a user's own data needs.

The training loop is the unified stage's; `FinetuneHooks` plugs into it:
- `configure`      freezes the parts named in `freeze` (dit / connector / projector / queries);
- `build_dataset`  resolves `--data`, self-captions, prescans and splits (`unimodal.finetune.data`);
- `after_step`     feeds the divergence monitor and computes the validation loss every `val.every`
                   steps (logged as val_loss / val_ce / val_fm in metrics.jsonl);
- `state_dict`     the monitor's history and the run's wall time so far, stored in every checkpoint.
`finetune` reruns the stage after each rollback (`unimodal.finetune.divergence`), then writes the
LoRA adapters and ``run_dir/finetune_report.json``. The stage itself exports the full model (LoRA
merged, EMA weights when kept) to ``run_dir/export``. Rerunning the same command resumes from the
newest complete checkpoint with the same data order, learning rates and monitor state.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from unimodal.config import atomic_write_text
from unimodal.data.sources import DataQualityError
from unimodal.finetune.config import FinetuneConfig
from unimodal.finetune.data import REPORT_FILE, build_finetune_data
from unimodal.finetune.divergence import (Diverged, DivergenceError, DivergenceMonitor, lr_scale, read_rollbacks,
                                          roll_back, stop_message)
from unimodal.finetune.export import export_run, freeze_parts
from unimodal.finetune.sources import detect_kind
from unimodal.finetune.validation import validation_loss
from unimodal.train.checkpoint import capture_rng_state, list_checkpoints, restore_rng_state
from unimodal.utils.distributed import all_reduce_mean, barrier, init_distributed
from unimodal.train.logging import NonFiniteLossError, RunLogger
from unimodal.train.pretrain import StageHooks, StepInfo, run_stage

FINAL_REPORT = "finetune_report.json"


class WallClock:
    """Wall seconds of the whole run over kills and reruns: this process's time plus what the
    checkpoint it first resumed from had counted (the time a killed attempt spent after its last
    checkpoint is lost with that checkpoint). Later loads in the same process (rollbacks to older
    checkpoints) change nothing: the time spent on the rolled-back steps was spent."""

    def __init__(self) -> None:
        self.started = time.time()
        self.before: float | None = None

    def resume(self, seconds: float) -> None:
        if self.before is None:
            self.before = seconds

    def seconds(self) -> float:
        return (self.before or 0.0) + time.time() - self.started


class FinetuneHooks(StageHooks):
    def __init__(self, cfg: FinetuneConfig, start_step: int = 0, clock: WallClock | None = None):
        self.cfg = cfg
        self.monitor = DivergenceMonitor(cfg.divergence)
        self.val = None
        self.last_step = start_step
        self.clock = clock or WallClock()

    def configure(self, model) -> None:
        freeze_parts(model, self.cfg.freeze)

    def build_dataset(self, cfg, dist, log):
        rng = capture_rng_state()   # prescan / captioning must not shift the run's random stream
        try:
            data = build_finetune_data(self.cfg, dist, log)
        finally:
            restore_rng_state(rng)
        self.val = data.val
        return data.train

    def after_step(self, info: StepInfo) -> None:
        cfg, step = self.cfg, info.step
        self.last_step = step
        if cfg.divergence.enabled:
            # Every rank must take the same decision: the loss is averaged, the grad norm is global.
            loss = float(all_reduce_mean(torch.tensor([info.loss], dtype=torch.float64)).item())
            reason = self.monitor.observe(step, loss, info.grad_norm)
            if reason is not None:
                info.logger.warning(f"step {step}: spike ({reason}); {self.monitor.streak} of "
                                    f"{cfg.divergence.patience} in a row roll back")
        every = cfg.val.every or cfg.train.ckpt_every
        if self.val is not None and (step % every == 0 or step == cfg.train.total_steps):
            val = validation_loss(info.model, self.val, mix=cfg.mix, fm_weight=cfg.fm_weight, shift=cfg.model.shift,
                                  batch_size=cfg.val.batch_size, max_batches=cfg.val.max_batches,
                                  seed=cfg.train.seed, autocast=info.engine.autocast)
            info.logger.metrics(step, **{f"val_{k}": v for k, v in val.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict(), "wall_seconds": self.clock.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock.resume(state.get("wall_seconds", 0.0))   # {} on a fresh start: nothing before it
        if state:
            self.monitor.load_state_dict(state["monitor"])


@dataclasses.dataclass
class FinetuneResult:
    export: Path                    # UnifiedModel.from_pretrained directory (LoRA merged)
    adapters: Path | None           # peft adapter directory (llm_mode=lora)
    report: Path                    # finetune_report.json
    rollbacks: list[dict[str, Any]]


def with_lr_scale(cfg: FinetuneConfig, scale: float) -> FinetuneConfig:
    """Every learning rate (peaks and floors of both groups) times `scale`."""
    if scale == 1.0:
        return cfg
    return cfg.replace(llm_lr=cfg.llm_lr * scale, dit_lr=cfg.dit_lr * scale,
                       train=cfg.train.replace(lr=cfg.train.lr * scale, min_lr=cfg.train.min_lr * scale))


def _last_val(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val_loss" in r]
    return {k: v for k, v in rows[-1].items() if k == "step" or k.startswith("val_")} if rows else None


def _write_report(run_dir: Path, **fields: Any) -> Path:
    report = dict(fields)
    data = run_dir / REPORT_FILE
    report["data"] = json.loads(data.read_text()) if data.is_file() else None
    report["validation"] = _last_val(run_dir)
    path = run_dir / FINAL_REPORT
    atomic_write_text(path, json.dumps(report, indent=1, default=str) + "\n")
    return path


def finetune(cfg: FinetuneConfig, deepspeed_config: str | None = None) -> FinetuneResult:
    """Train (resuming when the run folder has checkpoints), roll back on divergence, export."""
    run_dir = Path(cfg.train.run_dir)
    for spec in (cfg.data.path, cfg.data.eval_path):
        if spec and cfg.data.source == "auto":
            detect_kind(spec)   # a missing path fails now, not after the model has loaded
    dist = init_distributed(cfg.device)
    logger = RunLogger(run_dir, dist, name="unimodal.finetune", tensorboard=False)
    history = read_rollbacks(run_dir)
    clock = WallClock()
    status, error, export, adapters = "failed", None, None, None
    try:
        if len(history) > cfg.divergence.max_rollbacks:
            raise DivergenceError(stop_message(history, cfg.divergence, run_dir))
        while True:
            found = list_checkpoints(run_dir)
            hooks = FinetuneHooks(with_lr_scale(cfg, lr_scale(cfg.divergence, history)),
                                  start_step=found[-1][0] if found else 0, clock=clock)
            try:
                export = run_stage(hooks.cfg, deepspeed_config, stage="finetune", hooks=hooks)
                break
            except Diverged as e:
                event = e.event
            except NonFiniteLossError:
                if not cfg.divergence.enabled:
                    raise
                step = hooks.last_step + 1
                event = {"step": step, "first_bad_step": hooks.monitor.first_bad or step,
                         "reason": "non-finite loss (NaN or inf)"}
            logger.warning(f"divergence at step {event['step']} ({event['reason']}); rolling back to the last "
                           f"checkpoint before step {event['first_bad_step']}")
            barrier()
            history = roll_back(run_dir, event, cfg.divergence, dist.is_main)
            barrier()
            logger.warning(f"resuming from step {history[-1]['resumed_from_step']} with learning rates "
                           f"x{history[-1]['lr_scale']:.3g} (rollback {len(history)} of at most "
                           f"{cfg.divergence.max_rollbacks})")
        if cfg.llm_mode == "lora" and cfg.export_adapters and dist.is_main:
            adapters = Path(export_run(cfg, adapters_dir=run_dir / "adapters")["adapters"])
            logger.info(f"exported the LoRA adapters to {adapters} (peft format + trained.safetensors)")
        status = "finished"
    except (DivergenceError, DataQualityError) as e:
        status, error = "stopped", str(e)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if dist.is_main and run_dir.is_dir():
            report = _write_report(run_dir, status=status, error=error, total_steps=cfg.train.total_steps,
                                   llm_mode=cfg.llm_mode, rollbacks=history, export=export, adapters=adapters,
                                   wall_seconds=round(clock.seconds(), 1))
            logger.info(f"finetune {status}; report: {report}")
        logger.close()
    return FinetuneResult(Path(export), adapters, run_dir / FINAL_REPORT, history)
