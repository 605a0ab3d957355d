"""``convert_imageset``: a list file of images -> a Caffe Datum LMDB (or LevelDB), byte-compatible with Caffe's.

Same keys (``%08d_<name>``, numbered by list position, gaps where lines are skipped), same
Datum bytes (raw planar BGR or encoded), same skipped lines. On top of Caffe: parallel decoding
whose output is identical to ``jobs=1`` (results are written in list order), a progress bar, a
summary of what was skipped and why, atomic creation and automatic map-size growth.
"""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from caffe_compat.data.datum import encoded_datum, raw_datum
from caffe_compat.data.imageio import (
    ImageReadError,
    encode_image,
    extension_matches,
    guess_encoding,
    hwc_to_chw,
    load_image,
)
from caffe_compat.data.listfile import ImageList, ListEntry, read_list, show
from caffe_compat.data.db_writer import build_db, check_backend, check_db_target
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.progress import CaffeCountLog, bar_shown, progress_bar

log = logging.getLogger(__name__)
INT_MAX = 2**31 - 1
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ConvertOptions:
    """Caffe's convert_imageset flags (same names and defaults) plus our extras."""

    gray: bool = False
    shuffle: bool = False
    backend: str = "lmdb"
    resize_width: int = 0
    resize_height: int = 0
    check_size: bool = False
    encoded: bool = False
    encode_type: str = ""
    seed: int | None = None  # for --shuffle; Caffe's own shuffle is never reproducible
    jobs: int | None = None  # None = all usable cores
    overwrite: bool = False
    progress: bool | None = None  # None = only on a terminal


@dataclass
class ConvertSummary:
    """What a conversion did: counts, and every skipped line grouped by reason."""

    db: Path
    lines: int
    written: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skipped_text(self) -> str:
        """``skipped 2 (missing: 1, undecodable: 1)``, or empty when nothing was skipped."""
        n_skipped = sum(len(v) for v in self.skipped.values())
        if not n_skipped:
            return ""
        reasons = ", ".join(f"{reason}: {len(locs)}" for reason, locs in sorted(self.skipped.items()))
        return f"skipped {n_skipped} ({reasons})"

    def report(self) -> str:
        text = f"wrote {self.written} of {self.lines} images to {self.db}"
        return f"{text}; {self.skipped_text()}" if self.skipped else text


@dataclass(frozen=True)
class _Outcome:
    """One list line after reading/encoding (computed in a worker thread)."""

    value: bytes | None = None
    shape_size: int = 0  # channels*height*width as Caffe's --check_size sees it (0 if encoded)
    data_len: int = 0
    truncated: bool = False
    reason: str | None = None  # skipped: short reason key
    detail: str = ""  # skipped or fatal: what happened
    fatal: bool = False


@dataclass(frozen=True)
class _Job:
    root: bytes
    is_color: bool
    height: int
    width: int
    encoded: bool
    encode_type: str

    def __call__(self, entry: ListEntry) -> _Outcome:
        """Caffe's ``ReadImageToDatum`` for one line, as a serialized Datum."""
        encoding = self.encode_type or (guess_encoding(entry.name) if self.encoded else "")
        path = self.root + entry.name
        try:
            img = load_image(path, self.is_color, self.height, self.width)
        except ImageReadError as exc:
            return _Outcome(reason=exc.reason, detail=str(exc))
        pixels = img.pixels
        if not encoding:
            chw = hwc_to_chw(pixels)
            return _Outcome(raw_datum(chw, entry.label), chw.size, chw.size, img.truncated)
        is_three = pixels.ndim == 3 and pixels.shape[2] == 3
        if is_three == self.is_color and not self.height and not self.width and extension_matches(path, encoding):
            data = img.file_bytes
        else:
            try:
                data = encode_image(pixels, encoding)
            except ValueError as exc:
                return _Outcome(detail=f"{exc} (from --encode_type or the file extension)", fatal=True)
        return _Outcome(encoded_datum(data, entry.label), 0, len(data), img.truncated)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[R]:
    """``map(fn, items)`` on ``jobs`` threads, in order, with a bounded number in flight.

    Threads suffice: OpenCV decoding/resizing and numpy copies release the GIL.
    """
    if jobs <= 1:
        yield from map(fn, items)
        return
    window = jobs * 8
    with ThreadPoolExecutor(jobs) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _root_warning(root: str) -> str | None:
    if root and not root.endswith(("/", os.sep)) and os.path.isdir(root):
        return (
            f"ROOTFOLDER {root!r} has no trailing '/': Caffe joins by plain concatenation, "
            f"so names are looked up as {root!r} + name"
        )
    return None


def convert_imageset(root_folder: str, list_file: str | os.PathLike[str], db_name: str | os.PathLike[str],
                     options: ConvertOptions = ConvertOptions()) -> ConvertSummary:
    """Build ``db_name`` from ``list_file`` exactly as Caffe's ``convert_imageset`` would."""
    backend = check_backend(options.backend)
    target = Path(db_name)
    channels = 1 if options.gray else 3
    if options.resize_height > 0 and options.resize_width > 0 and \
            channels * options.resize_height * options.resize_width > INT_MAX:
        raise CaffeCompatError(
            f"--resize_height {options.resize_height} --resize_width {options.resize_width}: a datum of "
            f"{channels}x{options.resize_height}x{options.resize_width} values is past Caffe's blob limit (INT_MAX)")
    check_db_target(target, backend, options.overwrite)
    listing: ImageList = read_list(list_file)
    for warning in filter(None, [_root_warning(root_folder), *listing.warnings]):
        log.warning(warning)
    entries = list(listing.entries)
    if options.shuffle:
        log.info("Shuffling data")
        random.Random(options.seed).shuffle(entries)
    log.info(f"A total of {len(entries)} images.")
    if options.encode_type and not options.encoded:
        log.info("encode_type specified, assuming encoded=true.")
    job = _Job(
        root=os.fsencode(root_folder),
        is_color=not options.gray,
        height=max(0, options.resize_height),
        width=max(0, options.resize_width),
        encoded=options.encoded or bool(options.encode_type),
        encode_type=options.encode_type.lower(),
    )
    if job.encoded and not options.encode_type:
        for entry in entries:
            if b"." not in entry.name and entry.name:
                log.warning(f"{listing.where(entry)}: failed to guess the encoding of {show(entry.name)}")
    summary = ConvertSummary(target, len(entries))
    jobs = options.jobs or usable_cores()
    data_size: int | None = None
    shown = bar_shown(options.progress)
    lines = CaffeCountLog(1000, lambda n: log.info(f"Processed {n} files."), periodic=not shown)
    with build_db(target, backend, options.overwrite) as db, progress_bar(
        total=len(entries), unit="img", shown=shown, desc="convert-imageset"
    ) as bar:
        log.info(f"Opened {backend} {os.fspath(db_name)}")
        for key_index, (entry, outcome) in enumerate(zip(entries, ordered_map(job, entries, jobs))):
            bar.update()
            loc = listing.where(entry)
            if outcome.fatal:
                raise CaffeCompatError(f"{loc}: {show(entry.name)}: {outcome.detail}")
            if outcome.value is None:
                log.warning(f"{loc}: skipped {show(entry.name)}: {outcome.detail}")
                summary.skipped.setdefault(outcome.reason, []).append(loc)
                continue
            if outcome.truncated:
                log.warning(
                    f"{loc}: {show(entry.name)} is a truncated JPEG (no end marker); stored as Caffe "
                    "does, with the missing rows decoded as flat grey"
                )
            if options.check_size:
                if data_size is None:
                    data_size = outcome.shape_size
                elif outcome.data_len != data_size:
                    raise CaffeCompatError(
                        f"{loc}: --check_size: {show(entry.name)} gives {outcome.data_len} bytes of data, "
                        f"the first image gave {data_size} (Caffe aborts here too; nothing written)"
                    )
            db.put(b"%08d_" % key_index + entry.name, outcome.value)
            summary.written += 1
            lines.reach(summary.written)
        if not summary.written:
            raise CaffeCompatError(
                f"{where(list_file)}: none of the {summary.lines} images could be converted "
                f"({summary.skipped_text()}); nothing written"
            )
    lines.finish(summary.written)
    return summary

