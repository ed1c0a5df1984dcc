"""SA-1B straight from its tar shards (``sa1b_tar``), without extracting them.

SA-1B ships as ~1000 tar files ``sa_000000.tar`` ... of ~11k ``sa_<id>.jpg`` + ``sa_<id>.json`` pairs
each. A tar is read once to build its index: every member's data offset and size (tar stores
members uncompressed, one after the other) and, for each json, the index record the mask filters
need (:func:`samft.data.index.annotation_record`). The index is a json file next to the tar
(``<tar>.samft_index.json``), or under ``~/.cache/samft/tar_index/`` when the tar's folder is
read-only, keyed by the tar's size and modification time: a changed tar is indexed again.

Items are then read by offset (``os.pread``: no shared file position), so any number of DataLoader
workers and DDP ranks read the same tars at random; each process opens each tar once, lazily.

Bad input: a tar cut short (members past its end), a json without its image member or an image
without its json, malformed json: the affected items are skipped and counted, or raised naming the
tar and the member (``on_error``). A file that is not a tar at all is an error at start.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from samft.data.base import ImageSource, Loaded, MaskDataset
from samft.data.errors import BadFile, DataError
from samft.data.index import annotation_record, cached_records, user_cache_path
from samft.data.sa1b import parse_sa1b_json, sa1b_masks
from samft.registry import DATASETS

log = logging.getLogger("samft.data")

TAR_INDEX_SUFFIX = ".samft_index.json"


def find_tars(tars: str | Path | list[str | Path]) -> list[Path]:
    """The tar files ``tars`` names: a tar, a folder of ``*.tar``, a glob pattern, or a list of these.

    Raises:
        DataError: a name that matches no tar file.
    """
    found: list[Path] = []
    for entry in [tars] if isinstance(tars, (str, Path)) else list(tars):
        path = Path(entry)
        if path.is_dir():
            matches = sorted(path.glob("*.tar"))
        elif any(c in str(entry) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(entry)))
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            raise DataError(f"sa1b_tar: {entry} is not a tar file, a folder of *.tar files or a pattern matching "
                            "some (SA-1B's shards are sa_000000.tar, ...).")
        found.extend(matches)
    return found


def tar_index_path(tar: Path) -> Path:
    """``<tar>.samft_index.json`` when the tar's folder is writable, else one in the user cache."""
    if os.access(tar.parent, os.W_OK):
        return tar.with_name(tar.name + TAR_INDEX_SUFFIX)
    return user_cache_path(tar, "tar_index")


def tar_key(tar: Path) -> str:
    st = tar.stat()
    return hashlib.sha1(f"samft-tar-v1\0{tar.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def index_tar(tar: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of one tar, from its cached index when the tar is unchanged.

    Returns:
        ``(records, reused)``; each record has the keys of :data:`samft.data.base.RECORD_KEYS`
        plus ``member`` and ``at`` (``[offset, size]`` of the json and of the image).
    """
    return cached_records(tar_index_path(tar), tar_key(tar), lambda: _build_tar_records(tar), f"tar {tar}")


def _members(tar: Path) -> tuple[dict[str, tuple[int, int]], str | None]:
    """``{member name: (data offset, size)}`` of the regular files, and why the listing stopped early."""
    members: dict[str, tuple[int, int]] = {}
    problem = None
    try:
        with tarfile.open(tar, mode="r:") as tf:
            while True:
                try:
                    info = tf.next()
                except (tarfile.ReadError, EOFError, OSError) as exc:
                    problem = f"tar is damaged after {len(members)} members ({type(exc).__name__}: {exc})"
                    break
                if info is None:
                    break
                if info.isfile():
                    members[str(PurePosixPath(info.name.removeprefix("./")))] = (info.offset_data, info.size)
    except tarfile.ReadError as exc:
        raise DataError(f"sa1b_tar: {tar} is not a readable tar file ({exc}).") from None
    return members, problem


def _build_tar_records(tar: Path) -> list[dict[str, Any]]:
    members, problem = _members(tar)
    if problem:
        log.warning("%s: %s; the members listed before it are used", tar, problem)
    size = tar.stat().st_size
    records = []
    with open(tar, "rb") as f:
        for name in sorted(n for n in members if n.endswith(".json")):
            offset, length = members[name]
            if offset + length > size:
                text = b"{}"
                error = "member is cut off: the tar is truncated"
            else:
                text = os.pread(f.fileno(), length, offset)
                error = None
            rec = annotation_record(name, text)
            rec["member"] = name
            rec["json"] = f"{tar.name}:{name}"
            image_member = str(PurePosixPath(name).parent / rec["image"]) if rec["image"] else ""
            rec["image"] = image_member.removeprefix("./")
            at = members.get(rec["image"])
            rec["at"] = [[offset, length], list(at) if at else None]
            if error:
                rec["error"] = error
            elif not rec["error"] and at is None:
                rec["error"] = f"image member {rec['image']} is missing from the tar"
            elif not rec["error"] and at[0] + at[1] > size:
                rec["error"] = f"image member {rec['image']} is cut off: the tar is truncated"
            records.append(rec)
    jsons = {PurePosixPath(n).with_suffix("") for n in members if n.endswith(".json")}
    orphans = [n for n in members if n.lower().endswith((".jpg", ".jpeg")) and PurePosixPath(n).with_suffix("")
               not in jsons]
    for name in orphans:  # an image without annotations: reported as an unusable item
        rec = annotation_record(name, b"{}")
        cut = f" ({problem})" if problem else ""
        rec.update(json=f"{tar.name}:{name}", member=name, image=name, at=[None, list(members[name])],
                   error=f"json member {PurePosixPath(name).with_suffix('.json')} is missing from the tar{cut}")
        records.append(rec)
    return records


@DATASETS.register("sa1b_tar", paths=('tars',))
class SA1BTarDataset(MaskDataset):
    """SAM training items read straight from SA-1B tar shards.

    Args:
        tars: A tar, a folder of ``*.tar``, a glob pattern (``data/sa1b/sa_00000*.tar``), or a list of these.
        **settings: The shared pipeline's settings (see :class:`samft.data.sa1b.SA1BDataset`).
    """

    def __init__(self, tars: str | Path | list[str | Path], **settings: Any) -> None:
        self.tars = find_tars(tars)
        self.index_reused: list[bool] = []
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        super().__init__(**settings)

    @property
    def description(self) -> str:
        return f"sa1b_tar {', '.join(str(t) for t in self.tars[:3])}{' ...' if len(self.tars) > 3 else ''}"

    def _index(self) -> list[dict[str, Any]]:
        records = []
        for t, tar in enumerate(self.tars):
            recs, reused = index_tar(tar)
            self.index_reused.append(reused)
            for rec in recs:
                rec["tar"] = t
            records.extend(recs)
        return records

    def _where(self, index: int) -> str:
        rec = self.records[index]
        return f"{self.tars[rec['tar']]}:{rec['member']}"

    # Each process opens each tar once, on first use (a forked DataLoader worker must not share
    # its parent's descriptors' lifetimes, and pickled datasets carry none).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def _read_member(self, index: int, which: int) -> bytes:
        rec = self.records[index]
        tar = self.tars[rec["tar"]]
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(rec["tar"])
        try:
            if fd is None:
                fd = self._fds[rec["tar"]] = os.open(tar, os.O_RDONLY)
            offset, size = rec["at"][which]
            data = os.pread(fd, size, offset)
        except OSError as exc:
            raise BadFile(self._where(index), f"cannot read the tar ({exc})") from None
        if len(data) != size:
            raise BadFile(self._where(index), "member is cut off: the tar is truncated (or changed after it was "
                          "indexed)")
        return data

    def _load(self, index: int, positions: np.ndarray) -> Loaded:
        rec = self.records[index]
        where = self._where(index)
        raw = self._read_member(index, 0)
        info, anns = parse_sa1b_json(raw, where, rec)
        image_where = f"{self.tars[rec['tar']]}:{rec['image']}"
        image = ImageSource(self._read_member(index, 1), info["height"], info["width"], image_where)
        return sa1b_masks(info, anns, positions, image, where, raw)

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
