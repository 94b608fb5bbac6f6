"""A bounded pool of writer threads: member files created, written, chmodded and hashed off the
main thread, with the earliest failure in payload order handed back to the main thread.

The main thread keeps everything that decides *what* is written, in payload order: admitting
each member against the manifest and making its folders. A worker creates the member's file
(``O_CREAT | O_EXCL | O_NOFOLLOW``) at a path the main thread built from the admitted name
under a stage only we write to, in which every folder was made by the main thread before the
job was queued (so no folder can be missing or be anything else when a worker opens it), and
the manifest parser has refused any name that is another's folder. Memory is bounded: at most
``depth`` jobs wait, a small file's job holds its bytes (one chunk at most), a large file is
streamed through a queue of ``stream_depth`` chunks.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from ..formats.archive import CHUNK
from ..formats.manifest import FileEntry
from ..progress import Progress
from .policy import MemberTracker

_ZEROS: Final = bytes(CHUNK)
_HOLE_MIN: Final = 64 << 10
_BATCH_FILES: Final = 32
_BATCH_BYTES: Final = 4 << 20
# O_EXCL and O_NOFOLLOW: the path must be new; nothing can redirect the write.
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SYNC_FILE_RANGE_WRITE: Final = 2  # linux/fs.h: start writeback, do not wait for it
_WRITEBACK_STEP: Final = 8 << 20  # a large member's bytes handed to the disk this often
_SYNCFS_STEP: Final = 256 << 20  # small members' bytes between two background syncfs


class _Aborted(Exception):
    """The main thread abandoned a stream (its own error is the one reported)."""


class _Stream:
    """The chunks of one large member, from the main thread to the worker writing it.

    ``b""`` ends the stream, ``None`` abandons it; data chunks are never empty.
    """

    def __init__(self, depth: int = 4) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue(depth)
        self._ended = False  # the worker has taken the end (or abandon) marker

    def put(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def close(self) -> None:
        self._chunks.put(b"")

    def abort(self) -> None:
        """The main thread could not read the rest: the worker closes the file unchecked."""
        self._chunks.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self._chunks.get()
            if chunk is None or not chunk:
                self._ended = True
                if chunk is None:
                    raise _Aborted
                return
            yield chunk

    def drain(self) -> None:
        """Consume the rest, so the main thread never blocks on a failed job."""
        while not self._ended:
            chunk = self._chunks.get()
            self._ended = not chunk


@dataclass(frozen=True, eq=False)
class _Job:
    index: int
    entry: FileEntry
    path: str | None  # the file to create; None: hash only (verify)
    data: bytes | _Stream


class Writeback:
    """Starts the disk writes of a stage early, so its final syncfs has little left to do.

    Without this the kernel starts writing only once a tenth of RAM is dirty, and the final
    syncfs then waits for all of it. Two hints, neither of which waits for the disk: a large
    member's bytes are handed to the disk every ``_WRITEBACK_STEP`` (sync_file_range), and
    after every ``_SYNCFS_STEP`` of small members a background thread syncfs-es the stage
    (their files are closed by then, so per-file hints would cost a syscall each for
    nothing). Durability still comes only from the caller's final syncfs.
    """

    def __init__(self, root: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._range: Callable[..., int] | None = getattr(libc, "sync_file_range", None)
        if self._range is not None:
            self._range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        self._syncfs: Callable[[int], int] | None = getattr(libc, "syncfs", None)
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._small = 0  # small members' bytes since the last background syncfs
        self._kick = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="airgap-writeback", daemon=True)
        self._thread.start()

    def range(self, fd: int, offset: int, length: int) -> None:
        """``length`` bytes of ``fd`` from ``offset`` were written: start writing them out."""
        if self._range is not None and length > 0:
            self._range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored

    def small(self, length: int) -> None:
        """A small member of ``length`` bytes was written and closed."""
        with self._lock:
            self._small += length
            if self._small < _SYNCFS_STEP:
                return
            self._small = 0
        self._kick.set()

    def _run(self) -> None:
        while True:
            self._kick.wait()
            self._kick.clear()
            if self._done:
                return
            if self._syncfs is not None:
                self._syncfs(self._fd)

    def close(self) -> None:
        """Stop the background thread (waiting for a syncfs under way) and close the stage."""
        self._done = True
        self._kick.set()
        self._thread.join()
        os.close(self._fd)


def _drain(data: bytes | _Stream) -> None:
    if isinstance(data, _Stream):
        data.drain()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # write(2) may write less than asked
        view = view[os.write(fd, view) :]


def _fill(
    fd: int | None, entry: FileEntry, data: bytes | _Stream, writeback: Writeback | None
) -> str:
    """Write (unless hash-only) and hash one member's data; its sha256 in hex."""
    if isinstance(data, bytes):
        if fd is not None:
            _write_all(fd, data)
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    holes = False
    offset = flushed = 0  # bytes of the file so far; of those, handed to the disk
    for chunk in data:
        digest.update(chunk)
        if fd is None:
            continue
        if len(chunk) >= _HOLE_MIN and _ZEROS.startswith(chunk):  # a memcmp, no copy
            # A chunk of zeros becomes a hole: model files are often mostly zeros, and a
            # hole reads back the same bytes without writing (or syncing) them.
            os.lseek(fd, len(chunk), os.SEEK_CUR)
            holes = True
        else:
            _write_all(fd, chunk)
        offset += len(chunk)
        if writeback is not None and offset - flushed >= _WRITEBACK_STEP:
            writeback.range(fd, flushed, offset - flushed)
            flushed = offset
    if fd is not None and holes:
        os.ftruncate(fd, entry.size)  # trailing holes: the size comes from the length
    if fd is not None and writeback is not None:
        writeback.range(fd, flushed, offset - flushed)
    return digest.hexdigest()


class WriterPool:
    """Threads that create, fill and check the members the main thread admitted.

    Use as a context manager; ``finish()`` waits for every job and raises the earliest
    failure in payload order. Leaving the block any other way abandons queued work, closes
    every descriptor and joins the threads, so the caller may then remove the stage.
    ``writeback`` (None: none) starts the disk writes early (see ``Writeback``).
    """

    def __init__(
        self, threads: int = 2, depth: int = 4, writeback: Writeback | None = None
    ) -> None:
        # Small members go out in batches (fewer hand-overs and wake-ups per file); each
        # batch is bounded in count and bytes, and ``depth`` batches wait at most, so open
        # descriptors and buffered bytes stay bounded too.
        self._jobs: queue.Queue[list[_Job] | None] = queue.Queue(depth)
        self._batch: list[_Job] = []
        self._batch_bytes = 0
        self._lock = threading.Lock()
        self._errors: dict[int, BaseException] = {}
        self._first_error = sys.maxsize  # the index of the earliest failed member so far
        self._abandon = threading.Event()
        self._open: _Stream | None = None  # the stream the main thread is feeding
        self.submitted = 0
        self._writeback = writeback
        self._threads = [
            threading.Thread(target=self._run, name=f"airgap-writer-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        for t in self._threads:
            t.start()

    # ---- the main thread --------------------------------------------------------------

    def submit(self, entry: FileEntry, path: str | None, data: bytes) -> None:
        """A member whose data is all here (one chunk at most): create ``path`` (None: hash
        only), write, chmod, close, check."""
        self._batch.append(_Job(self.submitted, entry, path, data))
        self.submitted += 1
        self._batch_bytes += len(data)
        if len(self._batch) >= _BATCH_FILES or self._batch_bytes >= _BATCH_BYTES:
            self._flush()

    def stream(self, entry: FileEntry, path: str | None) -> _Stream:
        """A member too large to hold: put() its chunks, then close() (or abort())."""
        self._flush()
        stream = _Stream()
        self._jobs.put([_Job(self.submitted, entry, path, stream)])
        self.submitted += 1
        self._open = stream
        return stream

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._jobs.put(batch)  # interrupted while waiting: nothing was opened for these

    def end_stream(self, stream: _Stream, *, complete: bool) -> None:
        """The main thread is done feeding ``stream``: all of it, or it gave up."""
        self._open = None
        if complete:
            stream.close()
        else:
            stream.abort()

    @property
    def failed(self) -> bool:
        """A worker has failed; the caller should stop reading and call ``finish()``."""
        return bool(self._errors)

    def finish(self, failure: BaseException | None = None) -> None:
        """Wait for every job; raise the earliest failure in payload order.

        ``failure`` is the main thread's own error while it was at member ``submitted`` (or
        after the last one): a worker's failure on an earlier member wins, as it would have
        in a sequential unpack.
        """
        self._stop()
        earlier = [i for i in self._errors if failure is None or i < self.submitted]
        if earlier:
            raise self._errors[min(earlier)]
        if failure is not None:
            raise failure

    def _stop(self) -> None:
        self._flush()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()

    def __enter__(self) -> WriterPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if any(t.is_alive() for t in self._threads):
            # Interrupted (Ctrl-C) or an error outside finish(): drop what is queued.
            self._abandon.set()
            if self._open is not None:
                self.end_stream(self._open, complete=False)
            self._stop()

    # ---- the workers ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            for job in batch:
                self._do(job)

    def _do(self, job: _Job) -> None:
        fd: int | None = None
        try:
            if self._abandon.is_set() or job.index > self._first_error:
                # Abandoned, or an earlier member's failure is the one reported anyway.
                raise _Aborted
            if job.path is not None:
                fd = os.open(job.path, _CREATE, 0o600)
            digest = _fill(fd, job.entry, job.data, self._writeback)
            if fd is not None:
                os.fchmod(fd, job.entry.mode)
            MemberTracker.check_content(job.entry, digest)
        except _Aborted:
            _drain(job.data)
        except BaseException as e:  # re-raised by the main thread in finish()
            _drain(job.data)
            with self._lock:
                self._errors[job.index] = e
                self._first_error = min(self._first_error, job.index)
        finally:
            if fd is not None:
                os.close(fd)
                if self._writeback is not None and isinstance(job.data, bytes):
                    self._writeback.small(len(job.data))


def writer_threads(cpus: int | None = None) -> int:
    """Writers to start: file writes mostly wait in the kernel, so a few more than cores."""
    return min(4, max(2, (cpus or os.cpu_count() or 1) + 1))


def join_chunks(chunks: Iterable[bytes]) -> bytes:
    """A small member's data as one bytes object (usually it already is one chunk)."""
    parts = list(chunks)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def feed(
    pool: WriterPool,
    entry: FileEntry,
    path: str | None,
    chunks: Iterator[bytes],
    progress: Progress,
) -> None:
    """Hand one member's data to the pool: whole if it is one chunk, else streamed.

    ``path`` is the file the pool creates for it (None: hash only).
    """
    if entry.size <= CHUNK:
        data = join_chunks(chunks)
        pool.submit(entry, path, data)
        progress.advance(len(data))
        return
    stream = pool.stream(entry, path)
    complete = False
    try:
        for chunk in chunks:
            stream.put(chunk)
            progress.advance(len(chunk))
        complete = True
    finally:
        pool.end_stream(stream, complete=complete)


def run_members(
    members: Iterable[tuple[FileEntry, Iterator[bytes]]],
    place: Callable[[WriterPool, FileEntry, Iterator[bytes]], None],
    *,
    writeback: Writeback | None = None,
) -> None:
    """The write loop of unpack, verify and delta apply: every member, as ``members`` admits
    it, handed by ``place`` to one writer pool (usually through ``feed``).

    Returns once every member's content hash matched. Any failure, in this thread (a header,
    a limit, a folder) or in a worker (a hash, a write), is raised here, and it is the one on
    the earliest member in payload order, as in a sequential unpack.
    """
    with WriterPool(writer_threads(), writeback=writeback) as pool:
        try:
            for entry, chunks in members:
                place(pool, entry, chunks)
                if pool.failed:
                    break  # a worker failed: stop reading, finish() names the failure
        except Exception as e:
            pool.finish(e)
        pool.finish()
