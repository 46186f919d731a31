"""Self-captioning: images without a caption are described by the model being finetuned, first.

The captions go to ``run_dir/self_captions.jsonl`` ({"file_name": record key, "text": caption} per
line; for an image folder the keys are paths relative to it, so the file works as that folder's
metadata.jsonl once reviewed) with ``self_captions.meta.json`` beside it naming the model, the
question and the records. A rerun of the same command reuses the file; a change of any of those
captions again. Decoding is greedy, so captioning the same images twice gives the same text.

`caption_to_jsonl` is the batch form behind `unimodal caption --data SOURCE --out FILE.jsonl`: the
same rows, appended one by one, resumable. Both caption through a reader (`unified.backends`), so
they run on torch or on vLLM.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from unimodal.config import InputError, atomic_write_text
from unimodal.data.dataset import ImageDataset
from unimodal.unified.chat import CAPTION_QUESTION
from unimodal.finetune.sources import source_keys_digest

CAPTIONS_FILE = "self_captions.jsonl"
META_FILE = "self_captions.meta.json"


def _meta(model_dir: str, question: str, max_new_tokens: int, image_size: int, digest: str) -> dict[str, Any]:
    return {"model": str(Path(model_dir).resolve()), "question": question, "max_new_tokens": max_new_tokens,
            "image_size": image_size, "records": digest}


def load_self_captions(run_dir: str | Path, meta: dict[str, Any], source: Any, indices: list[int]) -> dict[int, str] | None:
    """The captions written earlier for exactly these settings and records, else None."""
    run_dir = Path(run_dir)
    if not (run_dir / CAPTIONS_FILE).is_file() or not (run_dir / META_FILE).is_file():
        return None
    if json.loads((run_dir / META_FILE).read_text()) != meta:
        return None
    keys = {source.record(i).key: i for i in indices}
    out = {}
    for line in (run_dir / CAPTIONS_FILE).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row["file_name"] not in keys:
                return None
            out[keys[row["file_name"]]] = row["text"]
    return out if len(out) == len(keys) else None


@torch.no_grad()
def caption_records(reader, source: Any, indices: list[int], *, image_size: int, question: str,
                    max_new_tokens: int, batch_size: int, log: Callable[[str], None]) -> dict[int, str]:
    """Greedy captions for records `indices` of `source` (centre-cropped to `image_size`) through
    `reader` (`unified.backends.open_reader`)."""
    data = ImageDataset(source, indices, image_size=image_size, train=False)
    out: dict[int, str] = {}
    for start in range(0, len(indices), batch_size):
        chunk = range(start, min(start + batch_size, len(indices)))
        pixels = torch.stack([data[k]["pixels"] for k in chunk])
        latents = reader.model.encode_images(pixels)
        texts = reader.caption(latents, question=question, max_new_tokens=max_new_tokens).texts
        out.update({indices[k]: t.strip() for k, t in zip(chunk, texts)})
        log(f"self-captioned {len(out)} of {len(indices)} images")
    return out


def done_keys(path: Path) -> set[str]:
    """The keys a captions JSONL already holds. A torn last line (a run killed mid-write) is cut
    off, so appending continues on a clean line; a torn line elsewhere is an error, not data."""
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(end)
    keys = set()
    for n, line in enumerate(raw[:end].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            keys.add(json.loads(line)["file_name"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{n} is not a captions row ({{\"file_name\": ..., \"text\": ...}}); "
                             "pass a new --out or remove the line") from None
    return keys


def caption_to_jsonl(reader, source: Any, out: str | Path, *, image_size: int, question: str = CAPTION_QUESTION,
                     max_new_tokens: int = 64, batch_size: int = 16,
                     log: Callable[[str], None] = print) -> dict[str, int]:
    """Caption every record of `source` into `out` ({"file_name": key, "text": caption} a line, the
    format of metadata.jsonl; an image that cannot be read gets {"file_name", "error"} instead).
    Rows are appended and flushed one at a time, so a killed run keeps all it wrote; rerunning
    skips the keys already there. Returns the counts of this call."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [i for i in range(len(source)) if source.record(i).key not in done]
    log(f"{len(done)} of {len(done) + len(todo)} images already in {out}; captioning {len(todo)}")
    data = ImageDataset(source, todo, image_size=image_size, train=False)
    counts = {"captioned": 0, "errors": 0, "skipped": len(done)}
    start_time = time.perf_counter()
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            good, pixels = [], []
            for k in range(start, min(start + batch_size, len(todo))):
                key = source.record(todo[k]).key
                try:
                    pixels.append(data[k]["pixels"])
                    good.append(key)
                except InputError as e:
                    f.write(json.dumps({"file_name": key, "error": str(e)}) + "\n")
                    f.flush()
                    counts["errors"] += 1
            if good:
                latents = reader.model.encode_images(torch.stack(pixels))
                texts = reader.caption(latents, question=question, max_new_tokens=max_new_tokens).texts
                for key, text in zip(good, texts):
                    f.write(json.dumps({"file_name": key, "text": text.strip()}) + "\n")
                    f.flush()
                counts["captioned"] += len(good)
            rate = counts["captioned"] / max(time.perf_counter() - start_time, 1e-9)
            log(f"captioned {counts['captioned'] + counts['errors']} of {len(todo)} ({rate:.1f} images/s)")
    return counts


def self_caption(model_dir: str, source: Any, indices: list[int], run_dir: str | Path, *, image_size: int,
                 question: str, max_new_tokens: int, batch_size: int, device: torch.device,
                 log: Callable[[str], None], backend: str = "torch") -> dict[int, str]:
    """Caption records `indices` with the model in `model_dir` (or reuse the run's captions file),
    on `backend` ("vllm": a vLLM engine, `$UNIMODAL_VLLM_PYTHON` or this Python; greedy captions
    are the same on both, so the file does not record which).

    Runs on one process; the global RNG state is left as it was (model construction draws from it),
    so a run that captions and one that reuses the file train identically.
    """
    from unimodal.train.checkpoint import capture_rng_state, restore_rng_state
    from unimodal.unified.backends import open_reader
    from unimodal.unified.model import UnifiedModel

    question = question or CAPTION_QUESTION
    meta = _meta(model_dir, question, max_new_tokens, image_size, source_keys_digest(source, indices))
    cached = load_self_captions(run_dir, meta, source, indices)
    if cached is not None:
        log(f"self-captions reused from {Path(run_dir) / CAPTIONS_FILE} ({len(cached)} images)")
        return cached
    rng = capture_rng_state()
    try:
        model = UnifiedModel.from_pretrained(model_dir, map_location=device, dtype="stored").eval()
        with open_reader(model, backend) as reader:
            captions = caption_records(reader, source, indices, image_size=image_size, question=question,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, log=log)
    finally:
        restore_rng_state(rng)
    run_dir = Path(run_dir)
    lines = "".join(json.dumps({"file_name": source.record(i).key, "text": captions[i]}) + "\n" for i in indices)
    atomic_write_text(run_dir / CAPTIONS_FILE, lines)
    atomic_write_text(run_dir / META_FILE, json.dumps(meta, indent=1) + "\n")  # written last: marks the file done
    empty = sum(1 for t in captions.values() if not t)
    log(f"self-captions written to {run_dir / CAPTIONS_FILE} ({len(captions)} images"
        + (f", {empty} empty: they count as empty_caption)" if empty else ")"))
    return captions
