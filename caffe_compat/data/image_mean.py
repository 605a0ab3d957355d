"""``compute_image_mean``: the per-pixel mean of a Datum LMDB (or LevelDB), as Caffe computes and writes it.

Caffe accumulates into the BlobProto's float32 ``data`` one datum at a time and divides by the
count in float32; we do the same float32 operations in the same order (whole arrays at a time),
so the result is identical, while streaming over the DB in bounded memory. Encoded datums are
decoded natively (``IMREAD_UNCHANGED``), as Caffe's ``DecodeDatumNative`` does.

When every datum is a raw one laid out like the first, or an encoded one decoding to the first
one's size (decoding is then the slow part), the work is split over forked worker processes (one
per core) so that the file stays byte-identical to Caffe's: while every sum stays
an exact integer below 2**24 (65,793 datums from zero, see :class:`_PixelSum`), by key range, as
integer partial sums add up to the same numbers in any order; past that, by pixel range, each
worker adding every further datum in key order as Caffe does (see :func:`_next_round`).
Anything else (float datums, a mix, a size mismatch) goes the sequential way, which also gives
Caffe's errors.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import mmap
import os
import signal
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from caffe_compat.atomic import atomic_write_bytes
from caffe_compat.data.datum import IMREAD_UNCHANGED, RawLayout, datum_array, parse_datum, raw_datum_view
from caffe_compat.data.lmdb_dataset import iter_records, open_readonly
from caffe_compat.errors import CaffeCompatError, where
from caffe_compat.io.blob import array_to_blob
from caffe_compat.progress import CaffeCountLog, bar_shown, progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageMean:
    """The mean image (float32 CxHxW), how many datums it averages, and Caffe's channel means."""

    mean: np.ndarray
    count: int
    encoded: bool

    @property
    def channel_means(self) -> list[float]:
        """Caffe's logged ``mean_value channel [c]``: float32 running sum over the plane / H*W."""
        c, h, w = self.mean.shape
        sums = np.add.accumulate(self.mean.reshape(c, h * w), axis=1, dtype=np.float32)[:, -1]
        return [float(np.float32(s) / np.float32(h * w)) for s in sums]

    def to_blobproto(self) -> bytes:
        """BlobProto with Caffe's legacy dims num=1/channels/height/width (no ``shape``)."""
        return array_to_blob(self.mean[None], legacy_dims=True).SerializeToString()


class _ByteSum:
    """Exact per-pixel sums of uint8 images into ``out`` (flat uint32), two pixels per operation.

    Read as little-endian uint16 words, an image holds pixel pairs ``lo + 256 * hi``. Summing the
    words wraps mod 2**16, but with the ``hi`` bytes summed on their own (``word >> 8``), both
    sums come back exactly: ``lo_sum = word_sum - 256 * hi_sum (mod 2**16)``, each being below
    2**16 for up to 257 images; then they go into ``out``. Three uint16 passes over half as many
    elements beat a uint8->uint16 cast plus add (about 15% in compute-image-mean).
    """

    LIMIT = 257  # 257 * 255 = 65535: the most uint8 images a uint16 sum can hold
    _WORD = np.dtype("<u2")
    _EIGHT = np.uint16(8)

    def __init__(self, out: np.ndarray) -> None:
        self.out = out
        self.even = out.size & ~1
        self.words = np.zeros(self.even // 2, np.uint16)
        self.high = np.zeros_like(self.words)
        self.tmp = np.empty_like(self.words)
        self.odd_pixel = 0  # the last pixel when the size is odd
        self.count = 0

    def add(self, flat: np.ndarray) -> None:
        """Add one contiguous flat uint8 image. Called once per datum: kept lean."""
        if self.even == flat.size:
            words = flat.view(self._WORD)
        else:
            words = flat[: self.even].view(self._WORD)
            self.odd_pixel += int(flat[-1])
        np.add(self.words, words, self.words)
        np.right_shift(words, self._EIGHT, self.tmp)
        np.add(self.high, self.tmp, self.high)
        self.count += 1
        if self.count == self.LIMIT:
            self.flush()

    def flush(self) -> None:
        """Add the sums so far into ``out`` and start again from zero."""
        out, even = self.out, self.even
        np.left_shift(self.high, 8, out=self.tmp)
        np.subtract(self.words, self.tmp, out=self.tmp)  # the lo sums, exact mod 2**16
        np.add(out[0:even:2], self.tmp, out=out[0:even:2])
        np.add(out[1:even:2], self.high, out=out[1:even:2])
        if even != out.size:
            out[-1] += self.odd_pixel
        self.words.fill(0)
        self.high.fill(0)
        self.odd_pixel = self.count = 0


_EXACT = 2**24  # float32 holds every integer below this, so Caffe's sums below it are exact


def _room(sums: np.ndarray) -> int:
    """How many more uint8 datums surely keep every sum below 2**24 (65,793 from zero)."""
    return max(0, (_EXACT - 1 - int(sums.max(initial=0))) // 255)


class _PixelSum:
    """Caffe's float32 running sum of flat datums, computed faster while it is provably the same.

    Caffe adds each datum into float32 in key order. While every partial sum stays below 2**24,
    float32 holds it exactly, so integer sums in any order (:class:`_ByteSum`) are the same
    numbers. The headroom (:func:`_room`: 65,793 datums from zero) is recomputed from the largest
    sum when it runs out; below one :class:`_ByteSum` chunk of it, or from a float_data datum on,
    we add in float32 in Caffe's order.
    """

    def __init__(self, size: int, start: np.ndarray | None = None) -> None:
        """``start``: float32 sums of earlier datums to go on from."""
        self.floats = np.zeros(size, np.float32) if start is None else start.astype(np.float32)
        exact = start is None or bool(start.max(initial=0) < _EXACT and np.all(start == np.floor(start)))
        self.ints: np.ndarray | None = self.floats.astype(np.uint32) if exact else None
        self.bytes: _ByteSum | None = _ByteSum(self.ints) if exact else None
        self.room = _room(self.ints) if exact else 0

    def add(self, flat: np.ndarray) -> None:
        """Add one flat datum (uint8 pixels or float_data values)."""
        if self.bytes is not None:
            if flat.dtype == np.uint8:
                if not self.room:
                    self.bytes.flush()
                    room = _room(self.ints)
                    self.room = room if room >= _ByteSum.LIMIT else 0  # else refreshes cost more than float32 adds
                if self.room:
                    self.bytes.add(flat)
                    self.room -= 1
                    return
            self._to_floats()
        np.add(self.floats, flat, out=self.floats)

    def sums(self) -> np.ndarray:
        """The float32 sums so far: Caffe's numbers (further datums are added in float32)."""
        if self.bytes is not None:
            self._to_floats()
        return self.floats

    def _to_floats(self) -> None:
        """Move the exact sums into float32 (exact: below 2**24); float32 adds from now on."""
        self.bytes.flush()
        self.floats[...] = self.ints
        self.bytes = self.ints = None


def _pixels(db, key: memoryview, value: memoryview) -> tuple[np.ndarray, bool]:
    """A datum's pixels (zero-copy for plain raw datums) and whether it was encoded."""
    view = raw_datum_view(value)
    if view is not None:
        return view[0], False
    try:
        datum = parse_datum(bytes(value))
        return datum_array(datum, IMREAD_UNCHANGED), datum.encoded
    except ValueError as exc:
        raise CaffeCompatError(f"{where(db)}: datum '{_show(bytes(key))}': {exc}") from None


def compute_image_mean(db: str | os.PathLike[str], progress: bool | None = None, backend: str = "lmdb") -> ImageMean:
    """Mean over every datum of ``db``; each must have the first datum's size (Caffe's check)."""
    if backend == "leveldb":
        return _leveldb_mean(db, progress)
    # One handle for the whole run: the helpers below would otherwise open and drop their own,
    # and Python ignores a Ctrl-C that lands in the finalizer closing a dropped one.
    handle = open_readonly(db)
    log.info(f"Opened lmdb {db}")  # Caffe's log lines, in its order
    total = handle.env.stat()["entries"]
    if total == 0:
        raise CaffeCompatError(f"{where(db)}: the database is empty")
    layout, encoded = _first_layout(db)
    if encoded:
        log.info("Decoding Datum")
    log.info("Starting iteration")
    shown = bar_shown(progress)
    lines = CaffeCountLog(10000, lambda n: log.info(f"Processed {n} files."), periodic=not shown)
    result = None
    if layout is not None:
        sums = _parallel_sums(db, layout, total, _cores(), shown, lines)
        if sums is not None:
            result = ImageMean((sums / np.float32(total)).reshape(layout.shape), total, encoded)
    if result is None:
        result = _sequential_mean(db, total, None if encoded else layout, shown, lines)
    lines.finish(result.count)
    return result


_MIN_DATUMS_PER_WORKER = 64  # below these a fork costs more than it saves
_MIN_PIXELS_PER_WORKER = 16384
_MIN_DATUMS_PER_ROUND = 4096  # a key-range round shorter than this is not worth its key scan
_CHUNK = 16  # datums per claim of a shared part (:class:`_Part`): a ~1 us pipe read per ~0.5 ms
_MAX_CLAIMS = 4096  # claims a pipe holds before its writer would block (it holds 64 KiB or more)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _DecodedLayout:
    """Encoded datums decoded as Caffe's ``DecodeDatumNative`` does, seen flat, for the forked
    workers: :meth:`flat_pixels` is None (the sequential path then takes over, with Caffe's
    errors) for anything but an encoded datum decoding to the first one's size."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.size = int(np.prod(shape))

    @classmethod
    def of(cls, value: memoryview) -> "_DecodedLayout | None":
        pixels = cls._decode(value)
        return None if pixels is None else cls(pixels.shape)

    def flat_pixels(self, value: memoryview) -> np.ndarray | None:
        pixels = self._decode(value)
        return None if pixels is None or pixels.size != self.size else np.ascontiguousarray(pixels).reshape(-1)

    @staticmethod
    def _decode(value: memoryview) -> np.ndarray | None:
        try:
            datum = parse_datum(bytes(value))
            return datum_array(datum, IMREAD_UNCHANGED) if datum.encoded else None
        except Exception:  # noqa: BLE001 - not a datum, or not decodable: the sequential path says which
            return None


def _first_layout(db: str | os.PathLike[str]) -> tuple[RawLayout | _DecodedLayout | None, bool]:
    """How the forked workers can read the datums, judged by the first one (None: they cannot),
    and whether that one is encoded (Caffe then decodes every datum, and says so)."""
    for _, value in iter_records(db, buffers=True):
        layout = RawLayout.of(value) or _DecodedLayout.of(value)
        return layout, isinstance(layout, _DecodedLayout) or (layout is None and _is_encoded(value))
    return None, False


def _is_encoded(value: memoryview) -> bool:
    try:
        return parse_datum(bytes(value)).encoded
    except Exception:  # noqa: BLE001 - not a datum: the sequential path says so
        return False


def _bar(total: int, shown: bool):
    return progress_bar(total=total, unit="datum", shown=shown, desc="compute-image-mean")


def _leveldb_mean(db: str | os.PathLike[str], progress: bool | None) -> ImageMean:
    """A LevelDB's mean: Caffe's loop in one pass (LevelDB keeps no record count, and lets one
    handle at a time read it, so the forked workers are for LMDBs only)."""
    from caffe_compat.data.leveldb import iter_leveldb

    records = iter_leveldb(db)
    try:
        first = next(records, None)
        log.info(f"Opened leveldb {db}")
        if first is None:
            raise CaffeCompatError(f"{where(db)}: the database is empty")
        if _is_encoded(memoryview(first[1])):
            log.info("Decoding Datum")
        log.info("Starting iteration")
        shown = bar_shown(progress)
        lines = CaffeCountLog(10000, lambda n: log.info(f"Processed {n} files."), periodic=not shown)
        views = ((memoryview(k), memoryview(v)) for k, v in itertools.chain([first], records))
        result = _sequential_mean(db, None, None, shown, lines, views)
    finally:
        records.close()
    lines.finish(result.count)
    return result


def _sequential_mean(db, total: int | None, layout: RawLayout | None, shown: bool, lines: CaffeCountLog,
                     records: Iterator[tuple[memoryview, memoryview]] | None = None) -> ImageMean:
    """Caffe's loop: one datum at a time in key order, any kind of datum (from ``records``, else
    the LMDB ``db``'s)."""
    acc: _PixelSum | None = None
    shape: tuple[int, ...] = ()
    count = 0
    encoded = False
    with _bar(total, shown) as bar:
        for key, value in records if records is not None else iter_records(db, buffers=True):
            pixels = layout.pixels(value) if layout is not None else None
            is_encoded = False
            if pixels is None:
                pixels, is_encoded = _pixels(db, key, value)
            if acc is None:
                shape = pixels.shape
                acc = _PixelSum(pixels.size)
                encoded = is_encoded
            elif pixels.size != acc.floats.size:
                raise CaffeCompatError(
                    f"{where(db)}: datum '{_show(bytes(key))}' has {pixels.size} values "
                    f"(shape {pixels.shape}), the first has {acc.floats.size} (shape {shape})"
                )
            acc.add(np.ascontiguousarray(pixels).reshape(-1))
            count += 1
            if count & 63 == 0:
                bar.update(count - bar.n)
                lines.reach(count)
        bar.update(count - bar.n)
    return ImageMean((acc.sums() / np.float32(count)).reshape(shape), count, encoded)


@dataclass(frozen=True)
class _Part:
    """One process's share of a round: ``count`` datums from key ``start``, pixels [lo, hi).

    ``start`` None: the DB's last ``count`` datums, read backwards from its last key, so that
    no key scan is needed to find where they begin (on a fresh mapping a scan costs a page fault
    per datum, as LMDB touches each value's first page).

    ``chunk`` > 0: the ``count`` datums are shared with the round's other such part, one going
    forward from ``start``, the other backwards from the end, each claiming ``chunk`` datums at
    a time from a pipe (the forward one first takes the odd rest) until none is left: they meet
    wherever the faster gets to, so a core slowed by a neighbour does not set the round's time.
    """

    start: bytes | None
    count: int
    lo: int
    hi: int
    chunk: int = 0


@dataclass(frozen=True)
class _Round:
    """Parts summed at once, each by its own process, after the rounds before.

    Not ``ordered``: integer partial sums of disjoint key ranges, added to the sums so far in
    any order. ``ordered``: every part takes all the round's datums in key order, as Caffe adds
    them, going on from the sums so far for its own pixel range.
    """

    parts: list[_Part]
    ordered: bool
    count: int  # datums the round covers
    after: bytes | None  # the key the next round starts from
    entries: int  # the DB's record count the plan was made for; workers check their snapshot has it


def _next_round(db, start: bytes | None, remaining: int, entries: int, size: int, cores: int, room: int,
                decodes: bool = False) -> _Round:
    """The round for the last ``remaining`` of the DB's ``entries`` datums, from key ``start``
    (None: the first), given the headroom (:func:`_room`) of the sums so far; how to split them
    without changing a bit. ``decodes``: reading a datum means decoding it, which a pixel split
    would repeat per worker."""
    if room >= min(remaining, _MIN_DATUMS_PER_ROUND):  # every partial sum stays an exact integer
        count = min(room, remaining)
        workers = max(1, min(cores, count // _MIN_DATUMS_PER_WORKER))
        firsts = [count * i // workers for i in range(workers)]
        counts = [b - a for a, b in itertools.pairwise([*firsts, count])]
        if workers == 1 or count < remaining:
            keys = _keys_from(db, start, [*firsts, count])
            parts = [_Part(key, n, 0, size) for key, n in zip(keys, counts)] if len(keys) >= workers else []
            return _Round(parts, False, count, keys[workers] if len(keys) > workers else None, entries)
        # the round ends the DB: its last two parts share their datums from both ends
        keys = _keys_from(db, start, firsts[:-1])
        if len(keys) < workers - 1:
            return _Round([], False, count, None, entries)
        pair = counts[-2] + counts[-1]
        chunk = max(_CHUNK, -(-pair // _MAX_CLAIMS))
        parts = [*(_Part(key, n, 0, size) for key, n in zip(keys, counts[:-2])),
                 _Part(keys[-1], pair, 0, size, chunk), _Part(None, pair, 0, size, chunk)]
        return _Round(parts, False, count, None, entries)
    workers = 1 if decodes else max(1, min(cores, size // _MIN_PIXELS_PER_WORKER))
    align = 64 if size // workers >= 64 else 1  # cache lines apart, unless the slices are tiny
    bounds = [size * i // workers // align * align for i in range(workers)] + [size]
    parts = [_Part(key, remaining, lo, hi) for key in _keys_from(db, start, [0])
             for lo, hi in itertools.pairwise(bounds)]
    return _Round(parts, True, remaining, None, entries)


def _keys_from(db, start: bytes | None, offsets: list[int]) -> list[bytes]:
    """The keys ``offsets`` (ascending) places after key ``start`` (None: the first key), as
    many as the DB has (keys only: cheap)."""
    shared = open_readonly(db)
    with shared.env.begin() as txn:
        cursor = txn.cursor()
        if not (cursor.first() if start is None else cursor.set_key(start)):
            return []
        keys = cursor.iternext(keys=True, values=False)
        wanted = set(offsets)
        return [key for index, key in zip(range(offsets[-1] + 1), keys) if index in wanted]


def _parallel_sums(db, layout: RawLayout | _DecodedLayout, total: int, cores: int, shown: bool,
                   lines: CaffeCountLog) -> np.ndarray | None:
    """Caffe's float32 pixel sums over ``db``, in rounds of forked processes (:func:`_next_round`);
    None if any datum does not have ``layout`` (or a worker failed): the caller then takes the
    sequential path."""
    sums = np.zeros(layout.size, np.float32)
    done = 0
    start: bytes | None = None
    with _bar(total, shown) as bar:
        while done < total:
            plan = _next_round(db, start, total - done, total, layout.size, cores, _room(sums),
                               isinstance(layout, _DecodedLayout))
            if not plan.parts:  # the DB has fewer records than it said
                return None

            def report(n: int, before: int = done) -> None:
                bar.update(before + n - bar.n)
                lines.reach(bar.n)

            sums = _run_round(db, layout, plan, sums, report)
            if sums is None:
                return None
            done += plan.count
            start = plan.after
            if start is None and done < total:  # the DB has fewer records than it said
                return None
    return sums


def _run_round(db, layout: RawLayout | _DecodedLayout, plan: _Round, sums: np.ndarray,
               report: Callable[[int], None]) -> np.ndarray | None:
    """The sums after ``plan``: this process sums the first part, one forked child each other.

    Each child opens the LMDB itself and leaves its sums (zeros outside its pixel range) and
    progress in shared memory.
    """
    parts, size = plan.parts, layout.size
    workers = len(parts)
    start = sums if plan.ordered else None
    shared = mmap.mmap(-1, workers * (size * 4 + 8))  # anonymous, shared with children
    rows = np.frombuffer(shared, np.float32, workers * size).reshape(workers, size)
    done = np.frombuffer(shared, np.int64, workers, workers * size * 4)
    per_datum = workers if plan.ordered else 1  # ordered: every worker goes through every datum
    claims = _claims(parts)
    children = []
    ok = False
    parent = os.getpid()
    try:
        for index in range(1, workers):
            pid = os.fork()
            if pid == 0:  # child: only sums (all its code is imported already); never returns to the caller
                status = 1
                try:
                    watch = _die_with_parent(parent)

                    def child_tick(n: int, index: int = index) -> None:
                        done[index] = n
                        if watch and os.getppid() != parent:
                            os._exit(1)

                    status = 0 if _sum_part(db, layout, plan.entries, parts[index], start, rows[index],
                                            child_tick, claims) else 1
                finally:
                    os._exit(status)
            children.append(pid)

        def tick(n: int) -> None:
            done[0] = n
            report(int(done.sum()) // per_datum)

        ok = _sum_part(db, layout, plan.entries, parts[0], start, rows[0], tick, claims)
    finally:
        for pid in children:  # reap them whatever happened here; stop them if their sums are moot
            if not ok:
                os.kill(pid, signal.SIGTERM)
            ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 and ok
        if claims is not None:
            os.close(claims)
    if not ok:
        return None
    report(int(done.sum()) // per_datum)  # the children's last counts, now that they are all in
    # exact either way: one non-zero term per pixel, or integers that stay below 2**24
    total = rows.sum(axis=0, dtype=np.float32)
    return total if plan.ordered else np.add(total, sums, out=total)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> bool:
    """Make this forked worker end with ``parent``: after a SIGTERM or ``kill -9`` of
    compute-image-mean its workers must not go on decoding. Linux sends them SIGKILL when the
    parent dies (``PR_SET_PDEATHSIG``); elsewhere True asks the caller to watch ``getppid``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0
    except (OSError, AttributeError):  # not Linux: no prctl
        failed = True
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    return failed


def _claims(parts: list[_Part]) -> int | None:
    """A pipe's read end holding one byte per chunk the shared parts will claim (None: none);
    its write end is closed, so a read past the last claim returns nothing."""
    shared = next((part for part in parts if part.chunk), None)
    if shared is None:
        return None
    read, write = os.pipe()
    try:
        os.write(write, b"." * (shared.count // shared.chunk))  # below the pipe's capacity: no wait
    finally:
        os.close(write)
    return read


def _quotas(part: _Part, claims: int | None) -> Iterator[int]:
    """How many datums ``part`` takes next, batch after batch (see :class:`_Part`)."""
    if not part.chunk:
        yield part.count
        return
    if part.start is not None and part.count % part.chunk:
        yield part.count % part.chunk
    while os.read(claims, 1):
        yield part.chunk


def _sum_part(db, layout: RawLayout | _DecodedLayout, entries: int, part: _Part, start: np.ndarray | None,
              out: np.ndarray, tick: Callable[[int], None], claims: int | None = None) -> bool:
    """Sum ``part`` (going on from ``start``) into ``out[part.lo:part.hi]``; False on any datum
    that does not have ``layout``, or if the DB no longer has ``entries`` records (the parts
    would then not tile it). ``claims``: the pipe a shared part claims its chunks from."""
    acc = _PixelSum(part.hi - part.lo, None if start is None else start[part.lo : part.hi])
    whole = part.lo == 0 and part.hi == layout.size
    n = 0
    shared = open_readonly(db)
    with shared.env.begin(buffers=True) as txn:
        if txn.stat(shared.env.open_db())["entries"] != entries:
            return False
        cursor = txn.cursor()
        if part.start is None:
            cursor.last()
            values = cursor.iterprev(keys=False, values=True)
        elif cursor.set_key(part.start):
            values = cursor.iternext(keys=False, values=True)
        else:
            return False
        wanted = 0
        for quota in _quotas(part, claims):
            wanted += quota
            for value in itertools.islice(values, quota):
                pixels = layout.flat_pixels(value)
                if pixels is None:
                    return False
                acc.add(pixels if whole else pixels[part.lo : part.hi])
                n += 1
                if n & 63 == 0:
                    tick(n)
            if n != wanted:  # the DB ended early
                return False
    out[part.lo : part.hi] = acc.sums()
    tick(n)
    return True


def write_image_mean(result: ImageMean, out: str | os.PathLike[str]) -> None:
    """Write the mean as Caffe does (legacy dims), atomically."""
    atomic_write_bytes(out, result.to_blobproto())


def _show(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")
