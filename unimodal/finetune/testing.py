"""Tiny finetune data in every source format, from the toy colour world (`unimodal.unified.testing`):
for tests and smoke runs."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def toy_records(n: int = 12, size: int = 32) -> list[tuple[bytes, str]]:
    """Up to 12 distinct (PNG bytes, caption) pairs: a square of one toy colour on another."""
    from unimodal.unified.testing import toy_caption, toy_image, toy_pairs

    pairs = toy_pairs()
    if not 1 <= n <= len(pairs):
        raise ValueError(f"the toy world has {len(pairs)} distinct images, asked for {n}")
    out = []
    for fg, bg in pairs[:n]:
        arr = (toy_image(fg, bg, size).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "PNG")
        out.append((buf.getvalue(), toy_caption(fg, bg)))
    return out


def write_folder(root: str | Path, records: list[tuple[bytes, str | None]], metadata: str = "jsonl") -> Path:
    """`root/img_XX.png` + metadata.jsonl / metadata.csv (records with caption None get no row)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (data, cap) in enumerate(records):
        (root / f"img_{i:02d}.png").write_bytes(data)
        if cap is not None:
            rows.append({"file_name": f"img_{i:02d}.png", "text": cap})
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif metadata == "csv":
        with open(root / "metadata.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["file_name", "text"])
            w.writeheader()
            w.writerows(rows)
    elif metadata != "none":
        raise ValueError(f"metadata must be jsonl, csv or none, got {metadata!r}")
    return root


def write_shards(folder: str | Path, records: list[tuple[bytes, str | None]], per_shard: int = 5,
                 caption_ext: str = "txt") -> list[Path]:
    """Webdataset shards `folder/shard-000000.tar`, ...: `{key}.png` + `{key}.txt` (or `.json`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(records), per_shard):
        path = folder / f"shard-{s // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i, (data, cap) in enumerate(records[s:s + per_shard], start=s):
                members = [(f"sample{i:06d}.png", data)]
                if cap is not None:
                    text = cap.encode() if caption_ext == "txt" else json.dumps({"caption": cap}).encode()
                    members.append((f"sample{i:06d}.{caption_ext}", text))
                for name, blob in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
        paths.append(path)
    return paths


def write_parquet(path: str | Path, records: list[tuple[bytes, str | None]]) -> Path:
    """A parquet file with an `image` column of encoded bytes and a `text` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": pa.array([d for d, _ in records], pa.binary()),
                      "text": pa.array([c for _, c in records], pa.string())})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_jsonl_paths(path: str | Path, records: list[tuple[bytes, str | None]]) -> Path:
    """`path` (jsonl: {"image": "images/XX.png", "text": ...}) with the images beside it."""
    path = Path(path)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (data, cap) in enumerate(records):
        (path.parent / "images" / f"{i:02d}.png").write_bytes(data)
        lines.append(json.dumps({"image": f"images/{i:02d}.png", "text": cap}))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_base_model(directory: str | Path, seed: int = 0) -> Path:
    """A random tiny unified model saved to `directory` (the start model of test finetunes)."""
    from unimodal.unified.testing import tiny_model

    return tiny_model(seed).save_pretrained(directory)
