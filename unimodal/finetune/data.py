"""The finetune data: resolve the source, self-caption if asked, prescan, cut captions, split, report.

`build_finetune_data` runs on every rank; rank 0 scans (and captions) and broadcasts the result.
Unusable records are skipped and counted per reason by `unimodal.data.sources.scan_source`:
the image's (`unimodal.data.images.REASONS`: missing, undecodable, truncated, too_small, ...),
the caption's (empty_caption, missing_caption: no caption column in its row, or no row) and the
metadata row's (missing_file, escaping_path, bad_row: `unimodal.data.sources.ImageFolderSource`). The
counts go to the log and to ``run_dir/data_report.json``, and `ScanReport.check` stops the run
before training when more than `data.max_bad_fraction` of the records is unusable. Captions longer
than `caption_cutter`'s limit are cut to it and counted (`truncated_captions`); they are used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from unimodal.config import ConfigError, atomic_write_text
from unimodal.data.dataset import ImageDataset
from unimodal.data.sources import ScanReport, scan_source
from unimodal.finetune.captioning import CAPTIONS_FILE, self_caption
from unimodal.finetune.config import FinetuneConfig
from unimodal.finetune.sources import CaptionCutter, CaptionOverlay, needs_caption, resolve_source
from unimodal.utils.distributed import DistInfo, barrier, broadcast_object

REPORT_FILE = "data_report.json"


@dataclasses.dataclass
class FinetuneData:
    train: ImageDataset
    val: ImageDataset | None
    report: dict[str, Any]       # what data_report.json holds


def _report_dict(report: ScanReport) -> dict[str, Any]:
    return {"total": report.total, "kept": len(report.kept), "skipped": report.skipped,
            "bad_fraction": round(report.bad_fraction, 6), "counts": dict(sorted(report.counts.items())),
            "examples": report.examples, "truncated_captions": len(report.truncated)}


def _source_info(source: Any, kind: str, spec: str) -> dict[str, Any]:
    info: dict[str, Any] = {"kind": kind, "path": spec, "records": len(source)}
    for name in ("other_files", "repeated_rows", "unreadable_shards"):
        if getattr(source, name, None):
            info[name] = getattr(source, name)
    if getattr(source, "shards", None):
        info["shards"] = len(source.shards)
    return info


def caption_cutter(cfg: FinetuneConfig) -> CaptionCutter:
    """Cuts captions to `data.max_caption_tokens`, or (0) to what the start model's positions leave
    beside the longest of its task conversations with an empty caption."""
    from unimodal.text.tokenizer import load_tokenizer
    from unimodal.unified.chat import ChatFormat
    from unimodal.unified.config import UnifiedConfig

    model = UnifiedConfig.load_json(Path(cfg.init_from) / "config.json")
    tokenizer, _ = load_tokenizer(cfg.init_from)
    chat = ChatFormat(tokenizer, model.num_latent_tokens, model.system_prompt, model.generate_template)
    positions = int(model.llm.get("max_position_embeddings", 32768))   # Qwen2Config's default
    room = chat.text_room(positions)
    if room < 1:
        raise ConfigError(f"{cfg.init_from}: {positions} positions leave no room for a caption beside the "
                          "model's task conversations")
    if cfg.data.max_caption_tokens > room:
        raise ConfigError(f"data.max_caption_tokens={cfg.data.max_caption_tokens} is more than the model's "
                          f"{positions} positions allow ({room}); lower it or set 0")
    return CaptionCutter(tokenizer, cfg.data.max_caption_tokens or room)


def _scan(source: Any, n: int, cfg, log, require_captions: bool, cut: CaptionCutter | None = None) -> ScanReport:
    return scan_source(source, indices=range(n), min_size=cfg.min_size, require_captions=require_captions,
                       dedupe=cfg.dedupe, workers=cfg.scan_workers, log=log, cut=cut)


def _prepare(cfg: FinetuneConfig, spec: str, run_dir: Path, dist: DistInfo, log: Callable[[str], None],
             role: str, cut: CaptionCutter) -> tuple[Any, ScanReport, dict[str, Any]]:
    """Rank 0: (source with captions filled in and cut, scan report, report dict) for one split's source."""
    d = cfg.data
    source, kind = resolve_source(spec, d.source, captions_optional=d.self_caption,
                                  split=d.train_split if role == "train" else d.eval_split,
                                  image_column=d.image_column, caption_column=d.caption_column)
    n = len(source) if not d.max_images else min(d.max_images, len(source))
    info = {"source": _source_info(source, kind, spec)}
    if d.self_caption:
        # Caption only what decodes; the second scan below then checks the captions (a generated
        # one may be empty) at the cost of decoding the images twice.
        first = _scan(source, n, d, log, require_captions=False)
        todo = [i for i in first.kept if needs_caption(source.record(i))]
        if todo:
            folder = run_dir if role == "train" else run_dir / "val"
            captions = self_caption(cfg.init_from, source, todo, folder, image_size=d.image_size,
                                    question=d.caption_question, max_new_tokens=d.caption_max_tokens,
                                    batch_size=d.caption_batch_size, device=dist.device, log=log,
                                    backend=d.caption_backend)
            source = CaptionOverlay(source, captions)
            info["self_captioned"] = {"images": len(todo), "file": str(folder / CAPTIONS_FILE)}
    report = _scan(source, n, d, log, require_captions=True, cut=cut)
    info["scan"] = _report_dict(report)
    if report.truncated:
        records = [source.record(i) for i in report.truncated]
        info["scan"]["truncated_examples"] = [r.key for r in records[:3]]
        source = CaptionOverlay(source, {i: cut(r.caption) for i, r in zip(report.truncated, records)},
                                fill_only=False)
    return source, report, info


def _holdout_count(cfg: FinetuneConfig, usable: int) -> int:
    d = cfg.data
    if d.eval_holdout:
        return d.eval_holdout
    if d.val_fraction == 0 or usable < 2:
        return 0
    return max(1, min(d.val_max, round(d.val_fraction * usable)))


def build_finetune_data(cfg: FinetuneConfig, dist: DistInfo | None = None,
                        log: Callable[[str], None] = print) -> FinetuneData:
    """Train (random crops) and validation (centre crops) datasets; writes data_report.json and
    raises DataQualityError (after writing it) when a split has too many unusable records."""
    dist = dist or DistInfo()
    d, run_dir = cfg.data, Path(cfg.train.run_dir)
    result = None
    if dist.is_main:
        try:
            result = ("ok", _prepare_all(cfg, run_dir, dist, log))
        except Exception as e:  # noqa: BLE001 - handed to every rank and re-raised there, so none waits forever
            result = ("error", e)
    result = broadcast_object(result)
    barrier()
    if result[0] == "error":
        raise result[1]
    sources, splits, report = result[1]
    mk = dict(image_size=d.image_size, hflip=d.hflip, min_size=d.min_size, background=d.background)
    train = ImageDataset(sources["train"], splits["train"], train=True, **mk)
    val = ImageDataset(sources["val"], splits["val"], train=False, **mk) if splits["val"] else None
    return FinetuneData(train, val, report)


def _prepare_all(cfg: FinetuneConfig, run_dir: Path, dist: DistInfo, log: Callable[[str], None]):
    d = cfg.data
    cut = caption_cutter(cfg)
    report: dict[str, Any] = {"max_bad_fraction": d.max_bad_fraction, "max_caption_tokens": cut.max_tokens}
    source, scan, report["train"] = _prepare(cfg, d.path, run_dir, dist, log, "train", cut)
    try:
        scan.check(d.max_bad_fraction)
        kept, sources = scan.kept, {"train": source, "val": source}
        if d.eval_path:
            sources["val"], vscan, report["val"] = _prepare(cfg, d.eval_path, run_dir, dist, log, "val", cut)
            vscan.check(d.max_bad_fraction)
            splits = {"train": kept, "val": vscan.kept}
        else:
            k = _holdout_count(cfg, len(kept))
            if k >= len(kept):
                raise ConfigError(f"the validation split ({k} records) leaves no training images ({len(kept)} usable); "
                                  "lower data.eval_holdout / data.val_fraction")
            # By a hash of the record key: the split stays put when files are added or removed elsewhere.
            ranked = sorted(kept, key=lambda i: hashlib.sha1(source.record(i).key.encode()).hexdigest())
            held = set(ranked[:k])
            splits = {"train": [i for i in kept if i not in held], "val": [i for i in kept if i in held]}
            report["val"] = {"holdout_of_train_source": k}
        report["split"] = {"train": len(splits["train"]), "val": len(splits["val"])}
        log(f"finetune data: {len(splits['train'])} train / {len(splits['val'])} validation images")
    finally:
        atomic_write_text(run_dir / REPORT_FILE, json.dumps(report, indent=1) + "\n")
    return sources, splits, report
