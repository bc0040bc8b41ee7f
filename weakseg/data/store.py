"""Where a prepared split's pixels live: row arrays on disk (or in RAM) that are read a batch at a time.

A prepared split's images (N, 3, S, S), masks (N, S, S) and native-resolution masks are written once, row by row,
into files of a cache entry (``images.npy``, ``masks.npy``, ``native.bin`` with its index ``native.npy``) and read
back by positional reads of just the rows a batch needs: the process holds no more than a batch, whatever the
number of images, and the operating system's page cache (shared, and given back under memory pressure) keeps the
files' hot parts. :class:`Rows` is the one view the code reads through: a file or an in-RAM tensor, a subset of its
rows (no copy), some rows blanked; :class:`StackedRows` stacks several per batch (one per training target).

Code that wants a whole split as one tensor (``PreparedSplit.images``) gets the file memory-mapped copy-on-write
(reads page in only what is touched; writes stay private to the process) or, for a subset, its rows gathered once.
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from weakseg.data.sample import IGNORE_INDEX
from weakseg.io import remove_temporaries, temporary_folder

Index = int | slice | Sequence[int] | np.ndarray | torch.Tensor


def _read_into(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` with the file's bytes from ``offset`` (positional reads: no shared file position)."""
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got <= 0:
            raise OSError(f"unexpected end of file at byte {offset + done}")
        done += got


class _Handle:
    """A read-only descriptor of one file, opened on first use in each process (also after a fork)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def fd(self) -> int:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        assert self._fd is not None
        return self._fd

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


class RowFile:
    """The first ``count`` rows of a ``.npy`` array (C order), read by row without mapping the file.

    ``keep`` holds whatever must outlive every reader of the file (the owner of a temporary folder)."""

    def __init__(self, path: str | Path, count: int | None = None, keep: object = None):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path}: a Fortran-order array cannot be read by rows")
        stored = shape[0]
        self.shape: tuple[int, ...] = (stored if count is None else count, *shape[1:])
        if self.shape[0] > stored:
            raise ValueError(f"{self.path} holds {stored} rows, not {self.shape[0]}")
        self.dtype = torch.from_numpy(np.empty(0, dtype)).dtype
        self._np_dtype = dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        needed = self.offset + self.shape[0] * self.row_bytes
        if self.path.stat().st_size < needed:
            raise ValueError(f"{self.path} is shorter than its {self.shape[0]} rows")
        self.keep = keep
        self._handle = _Handle(self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """The rows at ``rows`` (int64 indices, any order, repeats allowed) as a new tensor; runs of consecutive
        rows are read at once."""
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} rows of {self.path}")
        view = memoryview(out.numpy().reshape(len(rows), -1).view(np.uint8)).cast("B")
        fd = self._handle.fd()
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for run_start, run_end in zip([0, *breaks], [*breaks, len(rows)], strict=True):
            piece = view[run_start * self.row_bytes : run_end * self.row_bytes]
            _read_into(fd, piece, self.offset + int(rows[run_start]) * self.row_bytes)
        return out

    def mapped(self) -> torch.Tensor:
        """Every row as one tensor mapped from the file copy-on-write: nothing is read until touched, and writes
        go to private pages of this process, never to the file."""
        array = np.memmap(self.path, self._np_dtype, "c", self.offset, self.shape)
        return torch.from_numpy(array)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "count": self.shape[0]}  # read by path in another process; ``keep`` stays here

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["count"])


class Rows:
    """The rows (N, ...) of a split's images or labels: a :class:`RowFile` or an in-RAM tensor, seen through an
    optional row ``index`` (a subset, no copy) with the rows where ``blank`` is true read as ``fill``.

    Indexing reads rows (``rows[i]``, ``rows[index]`` with integers, a slice or a bool mask: a new tensor);
    :meth:`tensor` gives the whole view as one tensor (and from then on rows are read from it)."""

    def __init__(
        self,
        source: torch.Tensor | RowFile,
        index: torch.Tensor | None = None,
        blank: torch.Tensor | None = None,
        fill: int = IGNORE_INDEX,
    ):
        self.source = source
        self.index = index
        self.blank = blank
        self.fill = fill
        self._whole: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        rows = len(self.source) if self.index is None else len(self.index)
        return (rows, *tuple(self.source.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def on_disk(self) -> bool:
        return isinstance(self.source, RowFile)

    def __len__(self) -> int:
        return self.shape[0]

    def _positions(self, index: Index) -> torch.Tensor:
        """Row positions of this view (int64) for an int, slice, sequence, or bool / integer tensor."""
        if isinstance(index, slice):
            return torch.arange(*index.indices(len(self)))
        positions = torch.as_tensor(np.asarray(index) if isinstance(index, list | tuple) else index)
        if positions.dtype == torch.bool:
            return positions.nonzero().squeeze(1)
        positions = positions.long().reshape(-1)
        return torch.where(positions < 0, positions + len(self), positions)

    def take(self, index: Index) -> torch.Tensor:
        """The rows at ``index`` (positions in this view) as a new tensor (N', ...)."""
        positions = self._positions(index)
        if self._whole is not None:
            return self._whole[positions]
        rows = positions if self.index is None else self.index[positions]
        out = self.source.read(rows.numpy()) if isinstance(self.source, RowFile) else self.source[rows]
        if self.blank is not None:
            blanked = self.blank[positions]
            if blanked.any():
                out[blanked] = self.fill
        return out

    def __getitem__(self, index: Index) -> torch.Tensor:
        if isinstance(index, int | np.integer):
            return self.take([int(index)])[0]
        return self.take(index)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for chunk in self.chunks():
            yield from chunk

    def chunks(self, size: int = 256) -> Iterator[torch.Tensor]:
        """The rows in order, ``size`` at a time."""
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))

    def subset(self, index: Index) -> Rows:
        """A view on some rows (positions in this view), reading nothing."""
        positions = self._positions(index)
        if self._whole is not None:  # a view that was gathered whole: a subset of what it holds now
            return Rows(self._whole[positions])
        rows = positions if self.index is None else self.index[positions]
        blank = None if self.blank is None else self.blank[positions]
        return Rows(self.source, rows, blank, self.fill)

    def blanked(self, drop: torch.Tensor) -> Rows:
        """The same rows with those where ``drop`` (bool, one per row) is true read as ``fill``."""
        if self._whole is not None:
            out = self._whole.clone()
            out[drop] = self.fill
            return Rows(out)
        blank = drop.bool() if self.blank is None else self.blank | drop.bool()
        return Rows(self.source, self.index, blank, self.fill)

    def tensor(self) -> torch.Tensor:
        """All rows of the view as one tensor: an in-RAM source as it is, a whole file mapped (nothing read until
        touched), anything else gathered once (then kept, and rows are read from it)."""
        if self._whole is not None:
            return self._whole
        if self.index is None and self.blank is None:
            if not isinstance(self.source, RowFile):
                return self.source
            self._whole = self.source.mapped()
        else:
            self._whole = torch.cat(list(self.chunks())) if len(self) else self.take([])
        return self._whole

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.source, RowFile) and self.index is None and self.blank is None:
            state["_whole"] = None  # the mapping is made again from the file
        return state

    def __repr__(self) -> str:
        where = f"file {self.source.path}" if isinstance(self.source, RowFile) else "RAM"
        return f"Rows({tuple(self.shape)}, {self.dtype}, {where})"


class StackedRows:
    """Several :class:`Rows` of the same images read together: rows (N, K, ...), part k at ``[:, k]``."""

    def __init__(self, parts: Sequence[Rows]):
        if not parts or len({len(p) for p in parts}) != 1:
            raise ValueError("stacked rows need one or more parts of the same length")
        self.parts = list(parts)

    @property
    def shape(self) -> tuple[int, ...]:
        first = self.parts[0].shape
        return (first[0], len(self.parts), *first[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.parts[0])

    def take(self, index: Index) -> torch.Tensor:
        return torch.stack([p.take(index) for p in self.parts], 1)

    def subset(self, index: Index) -> StackedRows:
        return StackedRows([p.subset(index) for p in self.parts])

    def tensor(self) -> torch.Tensor:
        return torch.stack([p.tensor() for p in self.parts], 1)


RowSource = Rows | StackedRows


def as_rows(value: torch.Tensor | Rows) -> Rows:
    """``value`` as :class:`Rows` (a tensor is wrapped, not copied)."""
    return value if isinstance(value, Rows) else Rows(value)


def per_row(labels: torch.Tensor | Rows, reduce: Any, chunk: int = 256) -> torch.Tensor:
    """``reduce`` (rows -> one value per row) over all rows of ``labels``, ``chunk`` rows at a time (so that
    reading a split's masks holds no more than a chunk)."""
    rows = as_rows(labels)
    parts = [reduce(c) for c in rows.chunks(chunk)]
    return torch.cat(parts) if parts else reduce(rows.take([]))


def known_per_row(labels: torch.Tensor | Rows) -> torch.Tensor:
    """How many pixels of each row are not ``IGNORE_INDEX`` (int64, one per row)."""
    return per_row(labels, lambda c: (c != IGNORE_INDEX).flatten(1).sum(1))


# ------------------------------------------------------------------------------ native-resolution masks


class NativeMasks(Sequence[np.ndarray]):
    """Per-image masks of any sizes in one file (``native.bin``, the arrays' bytes one after the other) with an
    index ``native.npy`` (offset, height, width per image); ``masks[i]`` reads image i's mask."""

    def __init__(self, data: str | Path, index: np.ndarray, rows: np.ndarray | None = None, keep: object = None):
        self.data = Path(data)
        self.table = index
        self.rows = rows
        self.keep = keep
        self._handle = _Handle(self.data)

    @classmethod
    def open(cls, folder: str | Path, count: int, keep: object = None) -> NativeMasks:
        folder = Path(folder)
        index = np.load(folder / "native.npy")
        if len(index) < count:
            raise ValueError(f"{folder}: native masks of {len(index)} images, not {count}")
        index = index[:count]
        end = int((index[:, 0] + index[:, 1] * index[:, 2]).max()) if count else 0
        if (folder / "native.bin").stat().st_size < end:
            raise ValueError(f"{folder}/native.bin is shorter than its index")
        return cls(folder / "native.bin", index, keep=keep)

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else len(self.rows)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> NativeMasks: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | NativeMasks:
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of {len(self)}")
        row = i if self.rows is None else int(self.rows[i])
        offset, height, width = (int(v) for v in self.table[row])
        out = np.empty((height, width), np.uint8)
        _read_into(self._handle.fd(), memoryview(out.reshape(-1)), offset)
        return out

    def subset(self, indices: Sequence[int]) -> NativeMasks:
        picked = np.asarray(list(indices), np.int64)
        return NativeMasks(self.data, self.table, picked if self.rows is None else self.rows[picked], self.keep)

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "index": self.table, "rows": self.rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"], state["index"], state["rows"])


# ------------------------------------------------------------------------------ writing


class RowWriter:
    """Appends uint8 rows of one shape to a ``.npy`` file (positional writes, no mapping) whose length need not be
    known in advance: the rows start at a fixed offset (:data:`HEADER_BYTES`) and :meth:`close` writes the header
    with the number written (a standard ``.npy`` file; ``numpy.load`` and :class:`RowFile` read it)."""

    HEADER_BYTES = 128  # magic, length and the dict padded with spaces: a multiple of 64, as the format asks

    def __init__(self, path: str | Path, row_shape: tuple[int, ...]):
        self.path = Path(path)
        self.row_shape = tuple(int(v) for v in row_shape)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.count = 0

    def add(self, row: np.ndarray) -> int:
        """Append one row (``row_shape``, cast to uint8); returns its index."""
        buffer = np.ascontiguousarray(row, np.uint8).reshape(-1)
        if buffer.size != self.row_bytes:
            raise ValueError(f"a row of {buffer.size} bytes where {self.row_bytes} are stored")
        view, done, offset = memoryview(buffer).cast("B"), 0, self.HEADER_BYTES + self.count * self.row_bytes
        while done < self.row_bytes:
            done += os.pwritev(self.fd, [view[done:]], offset + done)
        self.count += 1
        return self.count - 1

    def close(self) -> int:
        """Write the header for the rows written, flush and close; returns their number."""
        shape = (self.count, *self.row_shape)
        text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}"
        magic = np.lib.format.magic(1, 0)
        length = self.HEADER_BYTES - len(magic) - 2
        if len(text) >= length:
            raise ValueError(f"shape {shape} does not fit the reserved header")
        header = magic + length.to_bytes(2, "little") + (text.ljust(length - 1) + "\n").encode("latin1")
        os.pwrite(self.fd, header, 0)
        os.ftruncate(self.fd, self.HEADER_BYTES + self.count * self.row_bytes)
        os.fsync(self.fd)
        os.close(self.fd)
        return self.count


class SplitWriter:
    """Writes a split's rows into ``folder`` as they come: ``images.npy`` (N, 3, S, S), ``masks.npy`` (N, S, S;
    rows without a mask all ``IGNORE_INDEX``; left out when no row has one) and, with ``native``, the native masks.
    The number of rows need not be known in advance (an image cut into tiles gives several);
    :meth:`close` says how many were written."""

    def __init__(self, folder: str | Path, size: int, native: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.images = RowWriter(self.folder / "images.npy", (3, size, size))
        self.masks = RowWriter(self.folder / "masks.npy", (size, size))
        self.any_mask = False
        self.native = open(self.folder / "native.bin", "wb") if native else None  # noqa: SIM115 (closed in close)
        self.native_index: list[tuple[int, int, int]] = []
        self._blank = np.full((size, size), IGNORE_INDEX, np.uint8)

    @property
    def count(self) -> int:
        return self.images.count

    def add(self, image: np.ndarray, mask: np.ndarray | None, native: np.ndarray | None = None) -> int:
        """Append one image (3, S, S), its mask (S, S) or None, and its native mask; returns its row."""
        self.masks.add(self._blank if mask is None else mask)
        self.any_mask = self.any_mask or mask is not None
        if self.native is not None:
            offset = self.native.tell()
            if native is not None:
                self.native.write(np.ascontiguousarray(native, np.uint8).tobytes())
                self.native_index.append((offset, *native.shape[:2]))
            else:
                self.native_index.append((offset, 0, 0))
        return self.images.add(image)

    def close(self, keep_native: bool = True) -> int:
        """Flush and close the files (the native masks only kept with ``keep_native``); the rows written."""
        count = self.images.close()
        self.masks.close()
        if self.native is not None:
            self.native.close()
            if keep_native:
                np.save(self.folder / "native.npy", np.array(self.native_index, np.int64).reshape(-1, 3))
            else:
                (self.folder / "native.bin").unlink()
        if not self.any_mask:
            (self.folder / "masks.npy").unlink()
        return count


class TemporaryFolder:
    """A folder removed once this object is garbage (or at exit): the readers of its files hold it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


def rows_on_disk(chunks: Iterable[torch.Tensor], row_shape: tuple[int, ...], beside: str | Path) -> Rows:
    """Rows made a chunk at a time (uint8 tensors (n, *row_shape)), written to a temporary file next to ``beside``
    as they come and read back by rows: labels derived from a split's rows (point labels, say) without holding
    them all in memory. The file is removed once the rows are garbage (or at exit); those of killed processes are
    removed by the next call."""
    remove_temporaries(Path(beside).parent, recursive=False)
    folder = temporary_folder(beside)
    owner = TemporaryFolder(folder)
    writer = RowWriter(folder / "rows.npy", row_shape)
    try:
        for chunk in chunks:
            for row in chunk.numpy():
                writer.add(row)
    finally:
        count = writer.close()
    return Rows(RowFile(folder / "rows.npy", count, keep=owner))
