"""The dataset index: what start-up needs to know about an SA-1B folder without parsing every json.

One record per ``<id>.json``: the image file, id and size, the annotation count and each
annotation's ``area``, ``predicted_iou``, ``stability_score`` and ``iscrowd`` (what the filters
need), or the reason the json cannot be used. The index is a json file, by default
``<root>/.samft_index.json`` (or under ``~/.cache/samft/index/`` when the folder is read-only).

It is reused while the folder is unchanged. The folder's key hashes the names, sizes and
modification times of its ``.json`` and ``.jpg`` files; when the key differs, the index is
rebuilt, re-parsing only the jsons whose name, size or modification time changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from samft.data.errors import DataError

log = logging.getLogger("samft.data")

INDEX_NAME = ".samft_index.json"
INDEX_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")
_PARALLEL_FROM = 256  # below this many jsons a process pool costs more than it saves


@dataclass
class FolderListing:
    """The annotated files of a folder and the key that identifies their current state."""

    jsons: list[os.stat_result]
    names: list[str]
    images: set[str]
    key: str


def missing_folder_message(root: Path, problem: str) -> str:
    return (f"Dataset folder {root} {problem}. samft reads SA-1B-style folders of <id>.jpg + <id>.json "
            f"pairs. Point data.train/data.val at such a folder, convert COCO annotations with "
            f"`python tools/coco_to_sa1b.py INSTANCES_JSON IMAGES_DIR {root}`, or write the synthetic demo "
            f"data with `python tools/make_demo_data.py DIR` (it fills DIR/train and DIR/val).")


def list_folder(root: Path) -> FolderListing:
    """List ``root``'s annotation jsons and compute the folder key (names + sizes + mtimes).

    Raises:
        DataError: the folder does not exist, is not a folder, or holds no annotation json.
    """
    if not root.exists():
        raise DataError(missing_folder_message(root, "does not exist"))
    if not root.is_dir():
        raise DataError(missing_folder_message(root, "is a file, not a folder"))
    digest = hashlib.sha1(f"samft-index-v{INDEX_VERSION}".encode())
    names, stats, images = [], [], set()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        is_json = entry.name.endswith(".json")
        if not (is_json or entry.name.endswith(IMAGE_SUFFIXES)):
            continue
        st = entry.stat()
        digest.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if is_json:
            names.append(entry.name)
            stats.append(st)
        else:
            images.add(entry.name)
    if not names:
        raise DataError(missing_folder_message(root, "holds no <id>.json annotation files"))
    return FolderListing(stats, names, images, digest.hexdigest())


def resolve_inside(root: Path, file_name: str) -> Path:
    """``root / file_name``, refusing names that lead outside ``root`` (``..``, absolute paths, links).

    Raises:
        DataError: the resolved path is not inside ``root``.
    """
    path = (root / file_name).resolve()
    base = root.resolve()
    if path != base and base not in path.parents:
        raise DataError(f"file_name {file_name!r} points outside the dataset folder {root}")
    return path


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_record(root: Path, name: str, text: str | bytes) -> dict[str, Any]:
    """The index record of one SA-1B json in folder ``root`` (``error`` holds the reason when it is unusable).

    Args:
        root: Dataset folder (to check that the image file is inside it and exists).
        name: The json's file name.
        text: The json's content.

    Returns:
        Dict with ``json``, ``image``, ``image_id``, ``height``, ``width``, ``n``, ``area``,
        ``predicted_iou``, ``stability_score``, ``crowd`` and ``error``.
    """
    record = annotation_record(name, text)
    if record["error"]:
        return record
    try:
        if not resolve_inside(root, record["image"]).is_file():
            record["error"] = f"image file {record['image']} is missing"
    except DataError as exc:
        record["error"] = str(exc)
    return record


def annotation_record(name: str, text: str | bytes) -> dict[str, Any]:
    """The index record of one SA-1B json's content (named ``name``), without looking for its image."""
    stem = name[: -len(".json")] if name.endswith(".json") else name
    record: dict[str, Any] = {"json": name, "image": f"{stem}.jpg", "image_id": stem, "height": 0, "width": 0,
                              "n": 0, "area": [], "predicted_iou": [], "stability_score": [], "crowd": [],
                              "error": None}
    try:
        data = json.loads(text)
        image, anns = data["image"], data["annotations"]
        record["image"] = str(image.get("file_name") or record["image"])
        record["image_id"] = image.get("image_id", stem)
        record["height"], record["width"] = int(image["height"]), int(image["width"])
        if not isinstance(anns, list):
            raise TypeError("'annotations' is not a list")
        record["n"] = len(anns)
        record["area"] = [_number(a.get("area")) or 0.0 for a in anns]
        record["predicted_iou"] = [_number(a.get("predicted_iou")) for a in anns]
        record["stability_score"] = [_number(a.get("stability_score")) for a in anns]
        record["crowd"] = [bool(a.get("iscrowd", 0)) for a in anns]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        record["error"] = f"malformed SA-1B json ({type(exc).__name__}: {exc})"
    return record


def _read_record(args: tuple[str, str]) -> dict[str, Any]:
    root, name = args
    try:
        text = (Path(root) / name).read_bytes()
    except OSError as exc:
        return {**parse_record(Path(root), name, b"{}"), "error": f"cannot read json ({exc})"}
    return parse_record(Path(root), name, text)


def default_index_path(root: Path) -> Path:
    """``<root>/.samft_index.json`` when the folder is writable, else a per-folder file in the user cache."""
    if os.access(root, os.W_OK):
        return root / INDEX_NAME
    return user_cache_path(root, "index")


def user_cache_path(path: Path, kind: str) -> Path:
    """A file for ``path`` (keyed by its absolute path) under ``$XDG_CACHE_HOME/samft/<kind>``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samft" / kind
    return cache / f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()}.json"


def cached_records(path: Path, key: str, build: Callable[[], list[dict[str, Any]]],
                   what: str) -> tuple[list[dict[str, Any]], bool]:
    """Records stored at ``path`` under ``key`` (a hash of the inputs' names, sizes and times), else
    ``build()``'s, stored there for next time (an unwritable place only costs rebuilding).

    Returns:
        ``(records, reused)``.
    """
    stored = _load(path)
    if stored and stored.get("key") == key:
        return stored["records"], True
    records = build()
    _save(path, {"version": INDEX_VERSION, "what": what, "key": key, "records": records})
    log.info("indexed %s: %d records -> %s", what, len(records), path)
    return records, False


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == INDEX_VERSION else None


def _stamp(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns)]


def load_index(root: str | Path, *, index_path: str | Path | None = None, workers: int = 0,
               progress: bool | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Records of every json in ``root``, from the index file when the folder is unchanged.

    Args:
        root: Dataset folder.
        index_path: Where to keep the index (default: :func:`default_index_path`).
        workers: Processes used to parse changed jsons (0 = in this process; a pool is used only
            from 256 changed files on).
        progress: Show a tqdm bar while parsing (default: when more than 256 files change).

    Returns:
        ``(records, reused)``: records sorted by json name, and whether the stored index was
        used as it was (no json parsed).
    """
    root = Path(root)
    listing = list_folder(root)
    path = Path(index_path) if index_path else default_index_path(root)
    stored = _load(path)
    if stored and stored.get("key") == listing.key:
        return stored["records"], True
    previous = {r["json"]: r for r in (stored or {}).get("records", [])}
    stamps = {name: _stamp(st) for name, st in zip(listing.names, listing.jsons)}
    records, todo = [], []
    for name, stamp in stamps.items():
        old = previous.get(name)
        if old is not None and old.get("stamp") == stamp and old.get("error") is None and (
                old["image"] in listing.images or (root / old["image"]).is_file()):
            records.append(old)
        else:
            todo.append(name)
    for rec in _parse_all(root, todo, workers, progress):
        rec["stamp"] = stamps[rec["json"]]
        records.append(rec)
    records.sort(key=lambda r: r["json"])
    _save(path, {"version": INDEX_VERSION, "root": str(root.resolve()), "key": listing.key, "records": records})
    log.info("indexed %s: %d jsons (%d parsed, %d reused) -> %s", root, len(records), len(todo),
             len(records) - len(todo), path)
    return records, False


def _parse_all(root: Path, names: list[str], workers: int, progress: bool | None) -> list[dict[str, Any]]:
    show = len(names) > _PARALLEL_FROM if progress is None else progress
    jobs = [(str(root), n) for n in names]
    if workers > 1 and len(names) >= _PARALLEL_FROM:
        with ProcessPoolExecutor(workers) as pool:
            results: Iterable[dict[str, Any]] = pool.map(_read_record, jobs, chunksize=32)
            return list(tqdm(results, total=len(jobs), desc=f"index {root.name}", disable=not show))
    return [_read_record(j) for j in tqdm(jobs, desc=f"index {root.name}", disable=not show)]


def _save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically; an unwritable location only costs re-indexing next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the dataset index %s (%s); it will be rebuilt next time", path, exc)
