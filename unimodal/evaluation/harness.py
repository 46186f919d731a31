"""The one generation harness every benchmark runner adapts: prompts -> images on disk.

- Items carry their *global* index in the benchmark file; a shard is a contiguous index range
  (`shard_range`), and output names derive from the global index / id, so shards never collide
  and never depend on each other (MetaQuery's sharded GenEval / DPG runs overwrote each other's folders).
- Every prompt's seed is `prompt_seed(run seed, global index)`; candidate k's noise seed derives
  from that (see `generator.py`), so any image is regenerated from its recorded numbers.
- Resume: an item whose files all exist is skipped; files are written through a temporary name
  and renamed, and an item's benchmark images are written last, so a killed run leaves either a
  finished item or one that is regenerated whole (identically: the seeds do not depend on batching).
- `generation.json` in the output holds the settings that determine the images; resuming (or a
  second shard) with different settings is refused instead of mixing two runs in one folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from PIL import Image

from unimodal.config import ConfigError, atomic_write_text
from unimodal.evaluation.generator import Candidate, ImageGenerator

_TMP = re.compile(r"^\..+\.tmp\d+$")  # our temporary names: ".<name>.tmp<pid>" (never `\d+.png`)


@dataclasses.dataclass(frozen=True)
class PromptItem:
    index: int                               # global position in the benchmark's prompt list
    name: str                                # output name: "00012" (GenEval) or the DPG prompt id
    prompt: str
    metadata: dict[str, Any] | None = None   # the GenEval metadata line, when there is one


def prompt_seed(seed: int, index: int) -> int:
    """Seed of the prompt at global `index` under run seed `seed` (63-bit, platform independent)."""
    digest = hashlib.sha256(f"unimodal-eval\x00{int(seed)}\x00{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shard_range(total: int, shard: int | None = None, num_shards: int | None = None,
                start: int | None = None, end: int | None = None) -> range:
    """Global indices one run covers: shard `shard` of `num_shards` contiguous, balanced parts
    (sizes differ by at most one), or [start, end); everything by default."""
    if (shard is None) != (num_shards is None):
        raise ConfigError("--shard and --num-shards go together")
    if shard is not None:
        if start is not None or end is not None:
            raise ConfigError("use either --shard/--num-shards or --start/--end, not both")
        if not (num_shards >= 1 and 0 <= shard < num_shards):
            raise ConfigError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
        return range(total * shard // num_shards, total * (shard + 1) // num_shards)
    lo = 0 if start is None else start
    hi = total if end is None else end
    if not 0 <= lo <= hi <= total:
        raise ConfigError(f"need 0 <= start <= end <= {total}, got start={lo} end={hi}")
    return range(lo, hi)


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """PNG through a temporary sibling and a rename: a reader never sees a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        image.save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_temporaries(folder: Path) -> None:
    """Delete temporaries a killed run left in `folder` (only names `save_png_atomic` makes)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and _TMP.match(p.name):
                p.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


class Layout(Protocol):
    """Where a benchmark's files go. `benchmark_files` are what its scorer reads (GenEval's
    samples, DPG's grid); `expected_files` adds the extras (rejected candidates)."""
    images_per_prompt: int      # benchmark files per prompt
    meta_dir: Path              # where settings and summaries go
    save_rejected: bool         # whether candidates best-of-N drops are written too

    def benchmark_files(self, item: PromptItem) -> list[Path]: ...
    def expected_files(self, item: PromptItem) -> list[Path]: ...
    def write(self, item: PromptItem, candidates: list[Candidate], record: dict[str, Any]) -> None: ...
    def scan(self) -> tuple[int, list[str]]:
        """(benchmark images the official scorer would read, problems found in the folder)."""
        ...


def is_finished(layout: Layout, item: PromptItem) -> bool:
    return all(p.is_file() for p in layout.expected_files(item))


def check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Write the run's image-determining settings, or refuse if the folder holds another run's."""
    settings = json.loads(json.dumps(settings))
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            pairs = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ConfigError(f"{path.parent} was generated with other settings ({pairs}); "
                              "use a new output folder or --overwrite")
        return
    write_json(path, settings)


@dataclasses.dataclass
class RunReport:
    selected: int           # prompts in this run's range
    skipped: int            # already finished (resume)
    generated: int          # prompts generated now
    seconds: float
    shard_complete: bool    # every prompt of the range has all its files

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seconds_per_prompt"] = self.seconds / self.generated if self.generated else None
        return d


def candidate_record(item: PromptItem, seed: int, n: int, keep: int, judge: str | None,
                     candidates: list[Candidate]) -> dict[str, Any]:
    """The per-prompt JSON: how each file was made and how the judge ranked it."""
    return {"index": item.index, "name": item.name, "prompt": item.prompt, "prompt_seed": seed, "n": n,
            "keep": keep, "judge": judge,
            "candidates": [{"rank": r, "index": c.index, "seed": c.seed, "kept": c.kept, **c.scores}
                           for r, c in enumerate(candidates)]}


def run_generation(items: Sequence[PromptItem], layout: Layout, generator: ImageGenerator, *, seed: int,
                   n: int, keep: int, judge: str | None, prompts_per_call: int = 1, decode_rejected: bool = False,
                   overwrite: bool = False, progress: bool = True) -> RunReport:
    """Generate every unfinished item of `items` (one shard's range) into `layout`."""
    from tqdm import tqdm

    if not 1 <= keep <= n:
        raise ConfigError(f"need 1 <= images per prompt ({keep}) <= candidates n ({n})")
    todo = [it for it in items if overwrite or not is_finished(layout, it)]
    start = time.time()
    bar = tqdm(total=len(todo), unit="prompt", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for i in range(0, len(todo), max(1, prompts_per_call)):
        chunk = todo[i:i + max(1, prompts_per_call)]
        seeds = [prompt_seed(seed, it.index) for it in chunk]
        outs = generator.generate([it.prompt for it in chunk], seeds, n=n, keep=keep, decode_rejected=decode_rejected)
        for it, s, cands in zip(chunk, seeds, outs):
            if len(cands) != n or [c.kept for c in cands] != [r < keep for r in range(n)]:
                raise RuntimeError(f"generator returned {len(cands)} candidates for {it.name!r}; expected {n}, "
                                   f"the first {keep} kept")
            layout.write(it, cands, candidate_record(it, s, n, keep, judge, cands))
        bar.update(len(chunk))
    bar.close()
    complete = all(is_finished(layout, it) for it in items)
    return RunReport(len(items), len(items) - len(todo), len(todo), time.time() - start, complete)


def count_check(layout: Layout, all_items: Sequence[PromptItem]) -> dict[str, Any]:
    """Expected vs found benchmark images over the *whole* benchmark (all shards)."""
    expected = len(all_items) * layout.images_per_prompt
    found, problems = layout.scan()
    missing = sum(1 for it in all_items for p in layout.benchmark_files(it) if not p.is_file())
    return {"expected": expected, "found": found, "missing": missing, "problems": problems[:20],
            "ok": found == expected and missing == 0 and not problems}


def tile_grid(images: Iterable[Image.Image], columns: int, tile: int | None = None) -> Image.Image:
    """Row-major grid of equal square tiles (resized to `tile` px when given)."""
    images = [im.convert("RGB") for im in images]
    size = tile or images[0].width
    images = [im if im.size == (size, size) else im.resize((size, size), Image.Resampling.BICUBIC) for im in images]
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * size, rows * size))
    for k, im in enumerate(images):
        grid.paste(im, ((k % columns) * size, (k // columns) * size))
    return grid
