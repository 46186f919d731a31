"""Shared training plumbing; one `<stage>.py` training function per stage builds on it.
Process groups and seeding (init_distributed, barrier, all_reduce_mean, seed_everything) live in
`unimodal.utils.distributed`, below `data/`, whose loaders share work across ranks too.

- config.TrainConfig        optimisation / bookkeeping settings shared by every stage
- schedule.warmup_cosine    pure lr schedule
- ema.EMA                   float32 EMA with an in-place swap for evaluation
- engine.TrainEngine        plain PyTorch (AdamW, DDP) or DeepSpeed (ZeRO 0-3), same API
- checkpoint                atomic, resumable step directories (save/load/latest_checkpoint)
- logging.RunLogger         stdout + train.log + metrics.jsonl, check_finite
- loop.infinite_loader      deterministic, rank-sharded, resumable data stream
"""
