"""Where images come from (a folder, a `datasets` dataset, or procedurally generated), and the prescan.

A source is a list of `Record`s: the encoded image (path, bytes or PIL image), an optional integer
label and an optional caption. `scan_source` decodes every record once before training, keeps the
usable ones and counts the rest per reason (images.REASONS, and missing_file / escaping_path /
bad_row for metadata rows that name no usable image, see ImageFolderSource); `ScanReport.check`
stops the run with one line when too much of the data is unusable, instead of silently training
on what is left.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from unimodal.data.images import BadImageError, load_rgb

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm",
                              ".pgm", ".pbm", ".tga", ".ico"})
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


class DataQualityError(ValueError):
    """Too many unusable records; one line with the counts and what to change."""


@dataclasses.dataclass
class Record:
    image: Any                 # str path | bytes | PIL.Image
    label: int | None = None
    caption: str | None = None
    key: str = ""              # a name for messages (file path, row number)
    problem: str | None = None  # a skip reason known without reading: a metadata row naming no usable image
    negative: str | None = None  # a caption known to be wrong for the image (a judge's hard negative)


class SyntheticImageSource:
    """Deterministic smooth images (a colour gradient plus a few soft blobs), for tests and smoke runs.

    Record i depends only on (seed, i). Labels are i % num_classes; captions name the blob colours.
    """

    COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
               "purple": (140, 50, 170), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (15, 15, 15)}

    def __init__(self, num_images: int, image_size: int = 64, *, seed: int = 0, num_classes: int = 0,
                 captions: bool = False):
        if num_images < 1 or image_size < 4:
            raise ValueError(f"synthetic source needs num_images >= 1 and image_size >= 4, got {num_images}, {image_size}")
        self.n, self.size, self.seed = num_images, image_size, seed
        self.num_classes, self.captions = num_classes, captions
        self.has_labels, self.has_captions = num_classes > 0, captions

    def __len__(self) -> int:
        return self.n

    def record(self, i: int) -> Record:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
        img = c0 * (1 - t) + c1 * t
        names = list(self.COLOURS)
        picked = []
        for _ in range(int(rng.integers(1, 4))):
            name = names[int(rng.integers(len(names)))]
            picked.append(name)
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25)
            w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + np.array(self.COLOURS[name], np.float32) * w
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
        caption = ("a gradient with " + " and ".join(f"a {c} blob" for c in picked)) if self.captions else None
        label = i % self.num_classes if self.num_classes else None
        return Record(pil, label, caption, key=f"synthetic[{i}]")


class ImageFolderSource:
    """A folder tree of images, read recursively in sorted order.

    - `class_subfolders`: ImageNet style, the first-level folder names sorted give labels 0..K-1.
    - captions: `metadata.jsonl` / `metadata.csv` files (the `datasets` imagefolder convention) with
      a `file_name` column relative to the metadata file's folder and a `text` or `caption` column.
      A row without the caption column leaves its image uncaptioned (missing_caption in the
      prescan); a row that names no image of the folder becomes a record of its own that the
      prescan skips as `missing_file`, `escaping_path` (absolute or ``..`` paths leading out of
      the folder; never opened) or `bad_row` (not a JSON object, no file_name). A later row for
      the same image replaces the earlier one's caption; the replaced rows are counted in
      `repeated_rows`.
    Files without an image extension (and the metadata files) are not records; they are counted in
    `other_files`. Files with an image extension that fail to decode are counted by the prescan.
    """

    def __init__(self, root: str | os.PathLike, *, class_subfolders: bool = False, captions: bool = False,
                 caption_column: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        files, self.other_files = [], 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                p = Path(dirpath) / fn
                if fn.startswith(".") or fn in METADATA_FILES:
                    continue
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(p)
                else:
                    self.other_files += 1
        self.files = sorted(files, key=lambda p: p.relative_to(self.root).as_posix())
        if not self.files:
            raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {self.root}")
        self.has_labels, self.has_captions = class_subfolders, captions
        self.classes: list[str] = []
        if class_subfolders:
            tops = {p.relative_to(self.root).parts[0] for p in self.files if len(p.relative_to(self.root).parts) > 1}
            loose = [p for p in self.files if len(p.relative_to(self.root).parts) == 1]
            if loose:
                raise FileNotFoundError(f"class_subfolders is set but {len(loose)} image(s) sit directly in "
                                        f"{self.root} (e.g. {loose[0].name}); move them into class folders")
            self.classes = sorted(tops)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self.captions_by_path: dict[str, str | None] = {}
        self.bad_rows: list[tuple[str, str]] = []   # (reason, key) of rows that name no usable image
        self.repeated_rows = 0
        if captions:
            self._read_metadata(caption_column)

    def _read_metadata(self, caption_column: str | None) -> None:
        metas = sorted(p for name in METADATA_FILES for p in self.root.rglob(name))
        if not metas:
            raise FileNotFoundError(f"captions requested but no {' or '.join(METADATA_FILES)} under {self.root}")
        # Paths are compared lexically (abspath, no link resolution): a row can only caption a file
        # the folder walk listed, so nothing outside that list is ever opened.
        root = os.path.abspath(self.root)
        listed = {os.path.abspath(p) for p in self.files}
        for meta in metas:
            for key, row in _metadata_rows(meta, self.root):
                name = row.get("file_name") if isinstance(row, dict) else None
                if not isinstance(name, str) or not name:
                    self.bad_rows.append(("bad_row", key))
                    continue
                path = os.path.abspath(meta.parent / name)
                if os.path.commonpath([root, path]) != root:
                    self.bad_rows.append(("escaping_path", f"{key} ({name})"))
                elif path not in listed:
                    self.bad_rows.append(("missing_file", f"{key} ({name})"))
                else:
                    col = caption_column or next((c for c in ("text", "caption") if c in row), None)
                    caption = row.get(col) if col is not None else None
                    self.repeated_rows += path in self.captions_by_path
                    # A non-string caption (null, a number, a list) counts as missing.
                    self.captions_by_path[path] = caption if isinstance(caption, str) else None

    def __len__(self) -> int:
        return len(self.files) + len(self.bad_rows)

    def fingerprint(self) -> str:
        """Changes when any file is added, removed, resized or touched, or a caption changes."""
        h = hashlib.sha1(f"{self.has_labels} {self.has_captions}".encode())
        for p in self.files + sorted(q for name in METADATA_FILES for q in self.root.rglob(name)):
            st = p.stat()
            h.update(f"{p.relative_to(self.root).as_posix()} {st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def record(self, i: int) -> Record:
        if i >= len(self.files):
            reason, key = self.bad_rows[i - len(self.files)]
            return Record(None, key=key, problem=reason)
        p = self.files[i]
        rel = p.relative_to(self.root)
        label = self._class_index[rel.parts[0]] if self.has_labels else None
        caption = self.captions_by_path.get(os.path.abspath(p)) if self.has_captions else None
        return Record(str(p), label, caption, key=rel.as_posix())


def _metadata_rows(meta: Path, root: Path):
    """(key, row) for every row of a metadata file; a row is a dict, or None when a jsonl line is
    not valid JSON. The key names the file and line for messages."""
    rel = meta.relative_to(root).as_posix()
    if meta.suffix == ".jsonl":
        for n, line in enumerate(meta.read_text(errors="replace").splitlines(), start=1):
            if line.strip():
                try:
                    yield f"{rel} line {n}", json.loads(line)
                except json.JSONDecodeError:
                    yield f"{rel} line {n}", None
    else:
        with open(meta, newline="", errors="replace") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=1):
                yield f"{rel} row {n}", row


class DatasetsSource:
    """A Hugging Face `datasets` dataset: a `save_to_disk` folder, data files (parquet / jsonl / json /
    csv, a path or glob) or a hub id. The image column may be an `Image` feature, encoded bytes or a
    path (relative paths resolve against the data files' folder)."""

    def __init__(self, path: str, *, split: str = "train", image_column: str = "image",
                 caption_column: str | None = None, label_column: str | None = None, captions: bool = False):
        import datasets

        self.path = path
        p = Path(path)
        builders = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
        if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"{path} has splits {sorted(ds)}, not {split!r}")
                ds = ds[split]
            self.base = p
        elif p.suffix.lower() in builders:
            ds = datasets.load_dataset(builders[p.suffix.lower()], data_files=path, split="train")
            self.base = p.parent
        else:
            ds = datasets.load_dataset(path, split=split)
            self.base = None
        if image_column not in ds.column_names:
            raise ValueError(f"{path}: no image column {image_column!r}; columns are {ds.column_names}")
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))  # we decode (and count) ourselves
        if captions:
            caption_column = caption_column or next((c for c in ("text", "caption") if c in ds.column_names), None)
            if caption_column is None or caption_column not in ds.column_names:
                raise ValueError(f"{path}: captions requested but no caption column; columns are {ds.column_names}")
        if label_column is not None and label_column not in ds.column_names:
            raise ValueError(f"{path}: no label column {label_column!r}; columns are {ds.column_names}")
        self.ds, self.image_column = ds, image_column
        self.caption_column, self.label_column = (caption_column if captions else None), label_column
        self.has_labels, self.has_captions = label_column is not None, captions

    def __len__(self) -> int:
        return len(self.ds)

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.ds._fingerprint} {self.image_column} {self.caption_column} "
                            f"{self.label_column}".encode()).hexdigest()

    def record(self, i: int) -> Record:
        row = self.ds[i]
        img = row[self.image_column]
        if isinstance(img, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
            img = img.get("bytes") or img.get("path")
        if isinstance(img, str) and self.base is not None and not os.path.isabs(img):
            img = str(self.base / img)
        label = int(row[self.label_column]) if self.label_column else None
        caption = row[self.caption_column] if self.caption_column else None
        return Record(img, label, caption, key=f"{self.path}[{i}]")


# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ScanReport:
    total: int
    kept: list[int]
    counts: dict[str, int]
    examples: dict[str, list[str]]  # reason -> up to 3 record keys
    truncated: list[int] = dataclasses.field(default_factory=list)  # kept records whose caption `cut` shortens

    @property
    def skipped(self) -> int:
        return self.total - len(self.kept)

    @property
    def bad_fraction(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        parts = ", ".join(f"{r} {n}" for r, n in sorted(self.counts.items()) if n)
        cut = f"; {len(self.truncated)} over-long captions truncated" if self.truncated else ""
        return f"kept {len(self.kept)} of {self.total} records" + (f"; skipped {parts}" if parts else "") + cut

    def check(self, max_bad_fraction: float) -> None:
        if self.total and self.bad_fraction > max_bad_fraction:
            first = next((f"{r}: {ex[0]}" for r, ex in sorted(self.examples.items()) if ex), "")
            raise DataQualityError(
                f"{self.skipped} of {self.total} records ({100 * self.bad_fraction:.1f}%) are unusable, above "
                f"data.max_bad_fraction={max_bad_fraction} ({self.summary()}; e.g. {first}); "
                "fix the data or raise data.max_bad_fraction")


def _content_hash(rec: Record) -> str | None:
    if isinstance(rec.image, (bytes, bytearray)):
        return hashlib.sha1(rec.image).hexdigest()
    if isinstance(rec.image, str):
        h = hashlib.sha1()
        with open(rec.image, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    return None  # generated images are not deduplicated


def _check_record(source: Any, i: int, min_size: int, require_captions: bool, dedupe: bool,
                  cut: Callable[[str], str | None] | None) -> tuple[str | None, str | None, str, bool]:
    """(skip reason or None, content hash or None, key, whether `cut` shortens the caption) for record i."""
    rec = source.record(i)
    if rec.problem is not None:
        return rec.problem, None, rec.key, False
    try:
        if require_captions:
            if rec.caption is None:
                raise BadImageError("missing_caption", f"{rec.key} has no caption")
            if not str(rec.caption).strip():
                raise BadImageError("empty_caption", f"{rec.key} has an empty caption")
        load_rgb(rec.image, min_size=min_size, name=rec.key)
        cuts = cut is not None and rec.caption is not None and cut(str(rec.caption)) is not None
        return None, (_content_hash(rec) if dedupe else None), rec.key, cuts
    except BadImageError as e:
        return e.reason, None, rec.key, False


def _check_chunk(args: tuple) -> list[tuple[str | None, str | None, str, bool]]:
    source, indices, *settings = args
    return [_check_record(source, i, *settings) for i in indices]


def scan_source(source: Any, *, min_size: int = 1, require_captions: bool = False, dedupe: bool = True,
                indices: Sequence[int] | None = None, workers: int = 0, log: Callable[[str], None] | None = None,
                cut: Callable[[str], str | None] | None = None) -> ScanReport:
    """Decode every record once; keep the usable ones, count the rest per reason. Order is preserved:
    of identical files the first (in source order) is kept. `workers` > 1 decodes in that many
    processes (the source must be picklable); the result is the same. `cut` (picklable too) maps
    a caption to a shortened one, or None when it fits; the kept records it shortens are listed in
    `ScanReport.truncated` (they are used, not skipped)."""
    indices = list(range(len(source)) if indices is None else indices)
    if workers > 1 and len(indices) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        size = max(1, min(256, len(indices) // (4 * workers)))
        chunks = [(source, indices[k:k + size], min_size, require_captions, dedupe, cut)
                  for k in range(0, len(indices), size)]
        # spawn, not fork: the parent may hold threads (torch, a process group) that fork would copy broken
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            checked = [r for chunk in pool.map(_check_chunk, chunks) for r in chunk]
    else:
        checked = _check_chunk((source, indices, min_size, require_captions, dedupe, cut))
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    kept, seen, truncated = [], set(), []
    for i, (reason, digest, key, cuts) in zip(indices, checked):
        if reason is None and digest is not None:
            if digest in seen:
                reason = "duplicate"
            seen.add(digest)
        if reason is None:
            kept.append(i)
            if cuts:
                truncated.append(i)
            continue
        counts[reason] = counts.get(reason, 0) + 1
        ex = examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(key)
    report = ScanReport(total=len(indices), kept=kept, counts=counts, examples=examples, truncated=truncated)
    if log is not None:
        log(f"image prescan of {getattr(source, 'root', getattr(source, 'path', type(source).__name__))}: "
            f"{report.summary()}")
    return report
