"""What identifies a dataset: its content, not where or when its files were written.

A fingerprint covers each file's relative name, size and content hash (BLAKE2b of the
bytes), its label, the class names and the preprocessing settings, in listing order (the
order decides the splits). A `cp -r` copy, a fresh download or an unpacked archive is the
same data; one changed byte is not.

Hashing reads every byte, so hashes are kept in a small index per dataset folder under
`cache_dir/index/` keyed by (relative name, size, mtime_ns): an unchanged file is not read
again, and a changed mtime only means "hash it again", never "different data".

Each fingerprint also leaves a compact manifest (name -> size, hash, label, plus the
settings) beside the index, so a refusal can say what differs (`describe_difference`).
Nothing is written until the caller says the data loaded (`Fingerprint.save`): a refused
dataset leaves the cache folder as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tunewise.atomic import write_text_atomic

log = logging.getLogger(__name__)

INDEX_DIR = "index"  # under the cache folder; never a fingerprint (those are hex digests)
INDEX_FORMAT = 1
# A file modified within this long of being hashed may change again within the same mtime
# tick (2 s on FAT/SMB) with the same size: such a hash is used now but not kept.
FRESH_NS = 2_000_000_000
HASH_THREADS = 8  # reading is mostly waiting on the disk (or a network file system)
MAX_NAMED = 5  # files named per kind of difference before "... and N more"


def hash_file(path: str) -> str:
    """BLAKE2b (128-bit) of the file's bytes, as hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _index_path(cache_root: Path, data_root: Path) -> Path:
    # One index per dataset folder: small to read, and datasets never contend for it.
    key = hashlib.blake2b(str(Path(data_root).resolve()).encode(), digest_size=8).hexdigest()
    return cache_root / INDEX_DIR / f"hashes-{key}.json"


def _manifest_path(cache_root: Path, fingerprint: str) -> Path:
    return cache_root / INDEX_DIR / "manifests" / f"{fingerprint}.json.gz"


def _read_index(path: Path, data_root: Path) -> dict[str, list]:
    try:
        index = json.loads(path.read_text())
        if index.get("format") == INDEX_FORMAT and index.get("root") == str(Path(data_root).resolve()):
            return index["files"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # absent or damaged: every file is hashed again, and the index rewritten
    return {}


@dataclass
class Fingerprint:
    """A dataset's identity and what it was computed from; `save` keeps the hashes
    and the manifest once the data has loaded."""

    value: str
    manifest: dict
    hashed: int = 0  # files read and hashed this time
    reused: int = 0  # files whose hash came from the index
    _index: tuple[Path, dict] | None = field(default=None, repr=False)  # (path, content) when it changed

    def save(self, cache_root: str | Path) -> None:
        try:
            self._save(Path(cache_root))
        except OSError as exc:  # a read-only shared cache: the next run hashes again, nothing breaks
            log.warning("could not keep the data's hashes in %s (%s); the next run reads the files again", cache_root, exc)

    def _save(self, cache_root: Path) -> None:
        if self._index is not None:
            path, content = self._index
            write_text_atomic(path, json.dumps(content, separators=(",", ":")))
            self._index = None
        manifest = _manifest_path(cache_root, self.value)
        if not manifest.exists():
            manifest.parent.mkdir(parents=True, exist_ok=True)
            tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}")
            tmp.write_bytes(gzip.compress(json.dumps(self.manifest, separators=(",", ":")).encode()))
            os.replace(tmp, manifest)


def of_settings(settings: dict) -> Fingerprint:
    """A built-in dataset (digits, synthetic): its settings are its content."""
    return Fingerprint(digest(settings), {"settings": settings, "classes": None, "files": None})


def of_files(
    root: Path, paths: list[str], stats: list[tuple[str, int, int]], labels, classes: list[str],
    settings: dict, cache_root: Path,
) -> Fingerprint:
    """The content fingerprint of listed files. `stats`: (relative name, size, mtime_ns)
    per path; `labels`: class index per path. Reads the index, hashes only what it lacks."""
    index_path = _index_path(cache_root, root)
    known = _read_index(index_path, root)
    started = time.time_ns()
    hashes: list[str | None] = []
    todo = []
    for i, (rel, size, mtime) in enumerate(stats):
        entry = known.get(rel)
        if entry is not None and entry[0] == size and entry[1] == mtime:
            hashes.append(entry[2])
        else:
            hashes.append(None)
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(todo))) as pool:
            for i, h in zip(todo, pool.map(lambda i: hash_file(paths[i]), todo)):
                hashes[i] = h
    names = [Path(rel).as_posix() for rel, _, _ in stats]
    files = [[name, size, h, classes[int(y)]] for name, (_, size, _), h, y in zip(names, stats, hashes, labels)]
    manifest = {"settings": settings, "classes": list(classes), "files": files}
    value = digest({"classes": list(classes), "files": [f[:3] + [int(y)] for f, y in zip(files, labels)], **settings})
    # Keep what other listings of this folder (another CSV over the same images) hashed,
    # unless the index has grown far past this listing (files deleted or renamed).
    kept = known if len(known) <= 2 * len(stats) + 1000 else {}
    fresh = {**kept, **{rel: [size, mtime, h] for (rel, size, mtime), h in zip(stats, hashes)}}
    for rel, _, mtime in stats:
        if mtime >= started - FRESH_NS:
            fresh.pop(rel)
    index = None
    if fresh != known:
        index = (index_path, {"format": INDEX_FORMAT, "root": str(Path(root).resolve()), "files": fresh})
    return Fingerprint(value, manifest, hashed=len(todo), reused=len(stats) - len(todo), _index=index)


def read_manifest(fingerprint: str, cache_dir: str | Path) -> dict | None:
    try:
        return json.loads(gzip.decompress(_manifest_path(Path(cache_dir), fingerprint).read_bytes()))
    except (OSError, ValueError, EOFError):
        return None


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" ... and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def describe_difference(old: str, new: str, cache_dir: str | Path) -> str | None:
    """What differs between two fingerprints' data, in one line; None when either
    manifest is not in `cache_dir` (see `cache.describe_difference`)."""
    if old == new:
        return "the same data"
    a, b = read_manifest(old, cache_dir), read_manifest(new, cache_dir)
    if a is None or b is None:
        return None
    parts = []
    settings = sorted(set(a["settings"]) | set(b["settings"]))
    parts += [f"{k}: {a['settings'].get(k)!r} -> {b['settings'].get(k)!r}" for k in settings
              if a["settings"].get(k) != b["settings"].get(k)]
    if a["files"] is None or b["files"] is None:
        if (a["files"] is None) != (b["files"] is None):
            parts.append("a built-in dataset and a file dataset")
        return "; ".join(parts) or "the data differ"
    old_files = {f[0]: f[1:] for f in a["files"]}
    new_files = {f[0]: f[1:] for f in b["files"]}
    added = [n for n in new_files if n not in old_files]
    removed = [n for n in old_files if n not in new_files]
    both = [n for n in new_files if n in old_files]
    changed = [n for n in both if old_files[n][:2] != new_files[n][:2]]
    relabelled = [f"{n}: {old_files[n][2]!r} -> {new_files[n][2]!r}" for n in both if old_files[n][2] != new_files[n][2]]
    for what, items in (("files added", added), ("files removed", removed), ("files changed", changed),
                        ("labels changed", relabelled)):
        if items:
            parts.append(f"{what}: {len(items)} ({_named(items)})")
    if a["classes"] != b["classes"]:
        parts.append(f"classes: {_named(a['classes'])} -> {_named(b['classes'])}")
    if not parts and [f[0] for f in a["files"]] != [f[0] for f in b["files"]]:
        parts.append("the same files in another order (the splits differ)")
    return "; ".join(parts) or "the data differ"


__all__ = ["Fingerprint", "of_files", "of_settings", "describe_difference", "hash_file", "read_manifest"]
