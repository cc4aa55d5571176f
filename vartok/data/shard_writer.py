"""make-shards: verify image files and pack the good ones into webdataset shards with a manifest.

Each good image is stored with its original bytes under the extension of its real format (``KEY.jpg``, plus
``KEY.cls`` with the class index when the input has classes); formats the loader does not read by extension
are re-encoded as PNG. Broken files are left out and listed in ``manifest.json`` with their reason, as are the
hidden files of an input folder that are not read (``hidden``) and the tiny images that are kept (``tiny``:
shorter side below TINY_SIDE pixels, so the loader will upscale them a lot). A progress
state (``make-shards.state.json``) is rewritten after every finished shard, so an interrupted run resumes
where it stopped; a finished folder is left alone; a folder made from other input is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from vartok.data.decode import FORMAT_EXTENSION, decode_image
from vartok.data.errors import DataError
from vartok.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, read_manifest, write_json_atomic
from vartok.data.sources import Source, list_sources
from vartok.data.tar_writer import ShardWriter

STATE_NAME = "make-shards.state.json"
TINY_SIDE = 32  # images whose shorter side is below this are kept but listed: icons, spacers, thumbnails
REENCODED, MISSING_FILE, UNREADABLE = "reencoded", "missing_file", "unreadable"


def verify_file(path: str, max_pixels: int | None = None) -> dict:
    """Read and fully decode one file; return what to store or why it is left out.

    Args:
        path: the image file.
        max_pixels: larger images are refused as ``too_large``.

    Returns:
        dict with ``reason`` (None when good), ``detail``, ``notes``, and for good files ``ext``, ``data`` and
        ``size`` (width, height).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return {"reason": MISSING_FILE, "detail": "file not found", "notes": ()}
    except OSError as err:
        return {"reason": UNREADABLE, "detail": str(err)[:200], "notes": ()}
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else None
    decoded = decode_image(data, ext, max_pixels)
    if decoded.reason is not None:
        return {"reason": decoded.reason, "detail": decoded.detail, "notes": ()}
    stored_ext = FORMAT_EXTENSION.get(decoded.format or "")
    notes = decoded.notes
    if stored_ext is None:  # e.g. TGA, ICO, PSD: keep the pixels, in a format every reader has
        buffer = io.BytesIO()
        decoded.image.save(buffer, format="PNG")
        data, stored_ext, notes = buffer.getvalue(), "png", notes + (REENCODED,)
    return {"reason": None, "detail": "", "notes": notes, "ext": stored_ext, "data": data,
            "size": decoded.image.size}


def _verify_star(args: tuple[str, int | None]) -> dict:
    return verify_file(*args)


def make_shards(input_path: str, output: str, maxcount: int = 10_000, maxsize: int = 3 * 10**9,
                workers: int = 1, max_pixels: int | None = None, progress: bool = True) -> dict:
    """Write verified shards of the images under `input_path` into `output`; return the manifest.

    Args:
        input_path: a folder of images (class = top-level folder, optional) or a list file.
        output: the shard folder: absent, empty, or a previous (interrupted or finished) run with the same input.
        maxcount: maximum samples per shard (> 0).
        maxsize: maximum bytes per shard (> 0).
        workers: processes verifying images in parallel (>= 1).
        max_pixels: images with more pixels are left out as ``too_large`` (default PIL's bomb limit).
        progress: show a progress bar.
    """
    for name, value in (("--maxcount", maxcount), ("--maxsize", maxsize), ("--workers", workers)):
        if not isinstance(value, int) or value <= 0:
            raise DataError(f"{name}={value!r} is not allowed; it must be a positive integer.")
    out = Path(output).expanduser()
    _refuse_foreign(out)
    hidden: list[dict] = []
    sources = list_sources(input_path, hidden)
    settings = {"maxcount": maxcount, "maxsize": maxsize, "max_pixels": max_pixels}
    fingerprint = _fingerprint(sources, settings)
    state = _prepare_output(out, fingerprint)
    if state.get("complete"):
        return state["manifest"]
    classes = sorted({s.label for s in sources if s.label is not None}) or None
    run = _Run(out, sources, classes, settings, fingerprint, state)
    run.input_path, run.hidden = str(input_path), hidden
    run.write(workers, progress)
    return run.manifest


def _fingerprint(sources: list[Source], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for source in sources:
        size = os.path.getsize(source.path) if os.path.exists(source.path) else -1
        digest.update(f"{source.name}\t{source.label}\t{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _refuse_foreign(out: Path) -> None:
    """The output must be absent, empty, or hold only what make-shards writes."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {out} is a file; give a folder (absent or empty) for the shards.")
    if not out.exists():
        return
    ours = {MANIFEST_NAME, STATE_NAME, STATE_NAME + ".tmp", MANIFEST_NAME + ".tmp"}
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in ours and not (p.name.startswith("shard-") and
                                                    (p.name.endswith(".tar") or p.name.endswith(".tar.tmp"))))
    if foreign:
        raise DataError(f"--output {out} already holds other files ({', '.join(foreign[:3])}...); "
                        "give an empty or new folder for the shards.")


def _prepare_output(out: Path, fingerprint: str) -> dict:
    """Create the output folder; return the resume state ({} for a fresh run, "complete" when done)."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) if (out / MANIFEST_NAME).exists() else None
    if manifest is not None:
        if manifest.get("fingerprint") != fingerprint:
            raise DataError(f"--output {out} already holds shards made from other input or settings; "
                            "give a new folder or delete this one.")
        return {"complete": True, "manifest": manifest}
    state_path = out / STATE_NAME
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != fingerprint:
            raise DataError(f"--output {out} holds an interrupted run over other input or settings; "
                            "give a new folder or delete this one.")
        keep = {shard["name"] for shard in state["shards"]}
    else:
        state, keep = {}, set()
        if any(out.iterdir()):
            raise DataError(f"--output {out} holds shard files but no manifest or progress state; "
                            "give an empty folder or delete these files.")
    for path in out.glob("shard-*"):  # shards written after the last saved state are redone
        if path.name not in keep:
            path.unlink()
    return state


class _Run:
    """One (possibly resumed) make-shards run: verification, writing, progress state and manifest."""

    def __init__(self, out: Path, sources: list[Source], classes: list[str] | None, settings: dict,
                 fingerprint: str, state: dict) -> None:
        self.out, self.sources, self.classes = out, sources, classes
        self.class_index = {name: i for i, name in enumerate(classes or [])}
        self.settings, self.fingerprint = settings, fingerprint
        self.shards: list[dict] = list(state.get("shards", []))
        self.bad: list[dict] = list(state.get("bad_files", []))
        self.converted: Counter[str] = Counter(state.get("converted", {}))
        self.tiny: list[dict] = list(state.get("tiny", []))
        self.hidden: list[dict] = []
        self.start = int(state.get("next_input", 0))
        self.position = self.start
        self.manifest: dict = {}
        self.input_path = ""

    def write(self, workers: int, progress: bool) -> None:
        todo = [(source.path, self.settings["max_pixels"]) for source in self.sources[self.start:]]
        bar = tqdm(total=len(self.sources), initial=self.start, unit="img", desc="make-shards",
                   disable=not progress, dynamic_ncols=True)
        writer = ShardWriter(self.out, self.settings["maxcount"], self.settings["maxsize"],
                             start_index=len(self.shards), on_shard_done=self._shard_done)
        pool = get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_verify_star, todo, chunksize=8) if pool else map(_verify_star, todo)
            with writer:
                for offset, result in enumerate(results):
                    self.position = self.start + offset
                    self._store(writer, self.sources[self.position], result)
                    bar.update(1)
                self.position = len(self.sources)
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
        self._write_manifest()

    def _store(self, writer: ShardWriter, source: Source, result: dict) -> None:
        if result["reason"] is not None:
            self.bad.append({"path": source.name, "reason": result["reason"], "detail": result["detail"]})
            return
        self.converted.update(result["notes"])
        if min(result["size"]) < TINY_SIDE:
            self.tiny.append({"path": source.name, "size": list(result["size"])})
        members = {result["ext"]: result["data"]}
        if source.label is not None:
            members["cls"] = str(self.class_index[source.label]).encode()
        writer.write(source.key, members)

    def _shard_done(self, name: str, count: int, size: int) -> None:
        """Called when a shard is renamed into place: every input before `position` is now done."""
        self.shards.append({"name": name, "count": count, "bytes": size})
        write_json_atomic(self.out / STATE_NAME, {
            "fingerprint": self.fingerprint, "next_input": self.position, "shards": self.shards,
            "bad_files": self.bad, "converted": dict(self.converted), "tiny": self.tiny})

    def _write_manifest(self) -> None:
        self.manifest = {
            "format": MANIFEST_FORMAT, "version": 1, "created_by": "vartok-data make-shards",
            "input": self.input_path, "fingerprint": self.fingerprint,
            "settings": self.settings, "total_images": sum(s["count"] for s in self.shards),
            "total_inputs": len(self.sources), "num_shards": len(self.shards), "shards": self.shards,
            "classes": self.classes, "skipped": dict(Counter(b["reason"] for b in self.bad)),
            "converted": dict(self.converted), "bad_files": self.bad, "hidden": self.hidden, "tiny": self.tiny,
        }
        write_json_atomic(self.out / MANIFEST_NAME, self.manifest)
        (self.out / STATE_NAME).unlink(missing_ok=True)
