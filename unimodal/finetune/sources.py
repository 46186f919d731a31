"""Which image source a `--data SOURCE` string names, and the one source kind `unimodal.data` lacks.

`resolve_source` picks, in this order:
- a `datasets.save_to_disk` folder (dataset_info.json / dataset_dict.json)        -> DatasetsSource
- a folder holding ``*.tar`` shards, or a ``.tar`` path / glob / brace list          -> TarShardSource
- any other folder (captions from metadata.jsonl / metadata.csv files)               -> ImageFolderSource
- a ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` file or glob (image paths or bytes) -> DatasetsSource
- anything else: a `datasets` hub id (needs the network)                             -> DatasetsSource

Webdataset shards (`TarShardSource`) are read with the standard library's `tarfile`: members are
grouped into samples by key (the member path up to the first dot of its file name, the webdataset
convention), a sample's image is its ``.png`` / ``.jpg`` / ... member and its caption the ``.txt``
member or the "caption" / "text" field of its ``.json`` member. The shards are indexed once; images
are read lazily by byte offset, so the source pickles small for prescan workers.
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from unimodal.config import ConfigError
from unimodal.data.sources import IMAGE_EXTENSIONS, METADATA_FILES, DatasetsSource, ImageFolderSource, Record

KINDS = ("auto", "folder", "files", "tar", "datasets")
DATA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
CAPTION_KEYS = ("caption", "text", "txt")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(spec: str) -> list[str]:
    """`a{0..2}.tar` -> a0.tar a1.tar a2.tar (zero padding kept, as in `{000..002}`); `{x,y}` lists."""
    m = _BRACE.search(spec)
    if m is None:
        return [spec]
    body, head, tail = m.group(1), spec[:m.start()], spec[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        parts = [str(v).zfill(width) for v in range(lo, hi + step, step)]
    elif "," in body:
        parts = body.split(",")
    else:
        raise ConfigError(f"{spec!r}: a brace group must be a list {{a,b}} or a range {{000..009}}")
    return [out for p in parts for out in expand_braces(head + p + tail)]


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from a folder (its ``*.tar``), a path, a glob or a brace list; sorted, deduplicated."""
    p = Path(spec)
    if p.is_dir():
        found = sorted(p.glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"no .tar shards in {p}")
        return found
    paths: list[Path] = []
    for item in expand_braces(spec):
        hits = sorted(glob.glob(item)) if glob.has_magic(item) else ([item] if Path(item).exists() else [])
        if not hits:
            raise FileNotFoundError(f"no shard matches {item!r}" + (f" (from {spec!r})" if item != spec else ""))
        paths.extend(Path(h) for h in hits)
    return sorted(set(paths), key=lambda q: paths.index(q))


def _split_key(name: str) -> tuple[str, str]:
    """Webdataset keys: "dir/000123.seg.png" -> ("dir/000123", "seg.png")."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _caption_from_json(data: bytes, where: str) -> str | None:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # a broken .json member: the sample counts as missing_caption
    if not isinstance(obj, dict):
        return None
    for k in CAPTION_KEYS:
        if isinstance(obj.get(k), str):
            return obj[k]
    return None


class TarShardSource:
    """Webdataset-style ``.tar`` shards as records (see the module docstring).

    Counted on construction: `other_files` (members that are neither image nor caption, samples
    with several images beyond the first) and `unreadable_shards` (a corrupt tar header stops the
    indexing of that shard; the samples read before it are kept, a warning names the shard).
    """

    def __init__(self, spec: str, *, captions: bool = True):
        self.spec, self.path = spec, spec
        self.shards = expand_shards(spec)
        self.has_labels, self.has_captions = False, captions
        self.other_files = 0
        self.unreadable_shards: list[str] = []
        # One entry per sample: (shard index, member name, data offset, size, caption or None).
        self.items: list[tuple[int, str, int, int, str | None]] = []
        for s, shard in enumerate(self.shards):
            self._index(s, shard)
        if not self.items:
            if self.unreadable_shards:
                raise ValueError(f"no readable samples in {spec} ({self.unreadable_shards[0]}); webdataset shards "
                                 "must be plain (uncompressed) .tar files")
            raise FileNotFoundError(f"no image members ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {spec}")

    def _index(self, s: int, shard: Path) -> None:
        images: dict[str, tuple[str, int, int]] = {}
        caps: dict[str, str | None] = {}
        order: list[str] = []
        try:
            # "r:" (no compression): images are then read back by byte offset without the tarfile.
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_key(m.name)
                    suffix = "." + ext.rsplit(".", 1)[-1] if ext else ""
                    if suffix in IMAGE_EXTENSIONS and key not in images:
                        images[key] = (m.name, m.offset_data, m.size)
                        order.append(key)
                    elif ext == "txt" and key not in caps:
                        caps[key] = tf.extractfile(m).read().decode("utf-8", errors="replace")
                    elif ext == "json" and key not in caps:
                        caps[key] = _caption_from_json(tf.extractfile(m).read(), m.name)
                    else:
                        self.other_files += 1
        except tarfile.ReadError as e:
            # A damaged header ends this shard's index; what was read before it stays usable.
            self.unreadable_shards.append(f"{shard}: {e}")
        for key in order:
            name, offset, size = images[key]
            self.items.append((s, name, offset, size, caps.get(key)))

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        h = hashlib.sha1(f"{self.has_captions}".encode())
        for shard in self.shards:
            st = shard.stat()
            h.update(f"{shard} {st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def record(self, i: int) -> Record:
        s, name, offset, size, caption = self.items[i]
        with open(self.shards[s], "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)  # a truncated shard gives fewer bytes: the decoder reports "truncated"
        return Record(data, None, caption if self.has_captions else None, key=f"{self.shards[s].name}:{name}")


class CaptionOverlay:
    """A source whose captions are replaced from `captions` (record index -> text): only missing
    or empty ones with `fill_only` (self-captioning), any one otherwise (over-long ones cut)."""

    def __init__(self, source: Any, captions: dict[int, str], fill_only: bool = True):
        self.source, self.captions, self.fill_only = source, dict(captions), fill_only
        self.has_labels, self.has_captions = bool(getattr(source, "has_labels", False)), True
        self.path = getattr(source, "path", getattr(source, "root", type(source).__name__))

    def __len__(self) -> int:
        return len(self.source)

    def record(self, i: int) -> Record:
        rec = self.source.record(i)
        if i in self.captions and (not self.fill_only or needs_caption(rec)):
            rec.caption = self.captions[i]
        return rec


class CaptionCutter:
    """Cuts a caption to its first `max_tokens` tokens, at the end of the last whole token in the
    original text (no decode round trip). Picklable, for prescan worker processes."""

    def __init__(self, tokenizer: Any, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self, caption: str) -> str | None:
        """The cut caption, or None when it fits."""
        # verbose=False: no "longer than the maximum sequence length" warning; long input is expected here.
        enc = self.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        if len(enc["input_ids"]) <= self.max_tokens:
            return None
        return caption[:enc["offset_mapping"][self.max_tokens - 1][1]]


def _has_metadata(root: Path) -> bool:
    return any(True for name in METADATA_FILES for _ in root.rglob(name))


def detect_kind(spec: str) -> str:
    """One of folder / files / tar / datasets for a `--data` string (see the module docstring)."""
    p = Path(spec)
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return "datasets"
        if any(p.glob("*.tar")):
            return "tar"
        return "folder"
    first = expand_braces(spec)[0]
    suffix = Path(first).suffix.lower()
    if suffix == ".tar":
        return "tar"
    if suffix in DATA_FILE_SUFFIXES:
        return "files"
    if p.exists():
        raise ConfigError(f"{spec}: not a folder, .tar shard or {'/'.join(DATA_FILE_SUFFIXES)} data file")
    if "/" in spec and not spec.startswith((".", "/")) and spec.count("/") == 1:
        return "datasets"  # owner/name: a hub id
    raise FileNotFoundError(f"data source not found: {spec} (for a hub id without an owner, set data.source=datasets)")


def resolve_source(spec: str, kind: str = "auto", *, captions_optional: bool = False, split: str = "train",
                   image_column: str = "image", caption_column: str | None = None) -> tuple[Any, str]:
    """(source, kind) for a `--data` string. With `captions_optional` (self-captioning), a source
    without any caption column / metadata file is accepted and its records carry no caption."""
    if kind not in KINDS:
        raise ConfigError(f"data.source must be one of {list(KINDS)}, got {kind!r}")
    kind = detect_kind(spec) if kind == "auto" else kind
    if kind == "tar":
        return TarShardSource(spec), kind
    if kind == "folder":
        root = Path(spec)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        captions = _has_metadata(root)
        if not captions and not captions_optional:
            raise ConfigError(f"{root} has no {' or '.join(METADATA_FILES)} with captions; add one "
                              "(columns file_name, text) or caption the images with --self-caption")
        return ImageFolderSource(root, captions=captions, caption_column=caption_column), kind
    if kind == "files" and not glob.glob(spec) and not Path(spec).is_file():
        raise FileNotFoundError(f"no data file matches {spec}")
    try:
        return DatasetsSource(spec, split=split, image_column=image_column, caption_column=caption_column,
                              captions=True), kind
    except ValueError as e:
        if not (captions_optional and "no caption column" in str(e)):
            raise
    return DatasetsSource(spec, split=split, image_column=image_column, captions=False), kind


def needs_caption(rec: Record) -> bool:
    return rec.caption is None or not str(rec.caption).strip()


def source_keys_digest(source: Any, indices: list[int]) -> str:
    """A digest of the record keys at `indices` (what a captions file was made for)."""
    h = hashlib.sha1()
    for i in indices:
        h.update(f"{i} {source.record(i).key}\n".encode())
    return h.hexdigest()

