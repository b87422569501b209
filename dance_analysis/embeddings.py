"""Embeddings: an id array and a matrix of vectors, saved as two ``.npy`` files.

``<prefix>.npy`` holds the float32 or float16 matrix [N, d]; ``<prefix>.ids.npy`` the unicode id array [N] in the
same row order. Both are plain npy files (no pickles); loading memory-maps the vectors by default, so a corpus
larger than memory can be searched or analysed in slices.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import publishing_path
from .errors import DanceError

VECTOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _prefix(prefix: str | os.PathLike) -> str:
    """``prefix`` without a trailing ``.npy`` (so both ``emb/corpus`` and ``emb/corpus.npy`` work)."""
    text = os.fspath(prefix)
    if text.endswith(".ids.npy"):
        return text[: -len(".ids.npy")]
    return text[: -len(".npy")] if text.endswith(".npy") else text


def vectors_path(prefix: str | os.PathLike) -> str:
    """Path of the vector file of ``prefix``."""
    return _prefix(prefix) + ".npy"


def ids_path(prefix: str | os.PathLike) -> str:
    """Path of the id file of ``prefix``."""
    return _prefix(prefix) + ".ids.npy"


def write_npy_atomic(path: str | os.PathLike, array: np.ndarray, chunk_rows: int = 65536) -> None:
    """Write ``array`` to ``path`` as npy, published atomically (:func:`dance_analysis.atomic.publishing_path`).

    Rows are copied in chunks, so a memory-mapped input is never loaded whole.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with publishing_path(path) as tmp:
        if isinstance(array, np.memmap) and array.ndim >= 1 and array.shape[0] > chunk_rows:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
            for start in range(0, array.shape[0], chunk_rows):
                out[start:start + chunk_rows] = array[start:start + chunk_rows]
            out.flush()
            del out
        else:
            with open(tmp, "wb") as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


@contextlib.contextmanager
def new_npy_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> Iterator[np.memmap]:
    """A writable memory map of a new npy file ``path`` of ``shape`` and ``dtype``, to fill row by row.

    The file is written at a temporary path beside ``path`` and published as ``path`` when the ``with`` block
    ends without an error (and removed when it raises), so ``path`` never holds a half-written array.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with publishing_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
        yield out
        out.flush()
        del out


def as_id_array(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """``ids`` as a 1-d numpy unicode array."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise DanceError(f"ids must be a 1-d sequence of strings, got shape {array.shape}")
    if array.dtype.kind != "U":
        if array.size and not all(isinstance(x, str) for x in array.tolist()):
            raise DanceError("ids must be strings")
        array = array.astype(str) if array.size else np.zeros(0, dtype="<U1")
    return array


@dataclass
class Embeddings:
    """Vectors with their ids: row i of ``vectors`` belongs to ``ids[i]``.

    ids: str array [N]. vectors: float32 or float16 array [N, d], possibly a read-only memmap.
    ``path`` is the vector file it was loaded from or saved to (used in error messages), else None.
    """

    ids: np.ndarray
    vectors: np.ndarray
    path: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ids = as_id_array(self.ids)
        where = f"{self.path}: " if self.path else ""
        if not isinstance(self.vectors, np.ndarray) or self.vectors.ndim != 2:
            shape = getattr(self.vectors, "shape", None)
            raise DanceError(f"{where}expected a 2-d vector matrix [N, d], got shape {shape}")
        if self.vectors.dtype not in VECTOR_DTYPES:
            raise DanceError(f"{where}expected float32 or float16 vectors, got {self.vectors.dtype}")
        if self.vectors.shape[0] != self.ids.shape[0]:
            raise DanceError(f"{where}{self.vectors.shape[0]} vector rows but {self.ids.shape[0]} ids "
                             f"(expected one id per row)")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        """Vector size d."""
        return int(self.vectors.shape[1])

    def save(self, prefix: str | os.PathLike) -> None:
        """Write ``prefix.npy`` (vectors) and ``prefix.ids.npy`` (ids), each atomically."""
        write_npy_atomic(vectors_path(prefix), self.vectors)
        write_npy_atomic(ids_path(prefix), self.ids)
        self.path = vectors_path(prefix)

    @classmethod
    def load(cls, prefix: str | os.PathLike, mmap: bool = True) -> Embeddings:
        """Read ``prefix.npy`` and ``prefix.ids.npy`` (vectors memory-mapped read-only when ``mmap``).

        Raises :class:`DanceError` naming the file when one is missing or unreadable, holds the wrong kind of
        array, or when the number of rows differs from the number of ids.
        """
        vec_file, id_file = vectors_path(prefix), ids_path(prefix)
        vectors = _load_npy(vec_file, mmap_mode="r" if mmap else None, what="a float32/float16 matrix [N, d]")
        ids = _load_npy(id_file, mmap_mode=None, what="a unicode id array [N]")
        if ids.ndim != 1 or ids.dtype.kind != "U":
            raise DanceError(f"{id_file}: expected a 1-d unicode id array, got {ids.dtype} with shape {ids.shape}")
        if vectors.ndim == 2 and vectors.shape[0] != ids.shape[0]:
            raise DanceError(f"{vec_file}: {vectors.shape[0]} vector rows but {id_file} has {ids.shape[0]} ids "
                             f"(expected one id per row; the two files do not belong together)")
        return cls(ids, vectors, path=vec_file)

    def subset(self, ids: Sequence[str] | np.ndarray) -> Embeddings:
        """The rows of ``ids``, in that order (vectors copied into memory); unknown ids raise DanceError."""
        wanted = as_id_array(ids)
        rows = self.rows(wanted)
        return Embeddings(wanted, np.asarray(self.vectors[rows]))

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row numbers (int64) of ``ids``; unknown ids raise DanceError naming some of them."""
        wanted = as_id_array(ids)
        position = {key: i for i, key in enumerate(self.ids.tolist())}
        missing = [key for key in wanted.tolist() if key not in position]
        if missing:
            where = f" in {self.path}" if self.path else ""
            raise DanceError(f"{len(missing)} id(s) have no vector{where}, e.g. {', '.join(map(repr, missing[:5]))}")
        return np.fromiter((position[key] for key in wanted.tolist()), dtype=np.int64, count=len(wanted))

    def check_finite(self, chunk_rows: int = 65536) -> Embeddings:
        """Raise :class:`DanceError` naming the rows (ids) and the file when a vector holds NaN or inf; returns
        ``self`` otherwise."""
        bad: list[int] = []
        for start in range(0, len(self), chunk_rows):
            block = np.asarray(self.vectors[start:start + chunk_rows])
            rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            bad.extend((rows + start).tolist())
        if bad:
            shown = ", ".join(f"{row} ({self.ids[row]})" for row in bad[:5])
            where = self.path or "embeddings (not saved)"
            raise DanceError(f"{where}: {len(bad)} vector(s) hold NaN or inf, rows {shown}"
                             f"{' ...' if len(bad) > 5 else ''}; expected finite values (a diverged model?)")
        return self


def _load_npy(path: str, *, mmap_mode: str | None, what: str) -> np.ndarray:
    if not Path(path).is_file():
        raise DanceError(f"{path}: file is missing (expected {what})")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as exc:  # ValueError (pickled object arrays, bad header), OSError, EOFError
        raise DanceError(f"{path}: cannot read it as npy ({type(exc).__name__}: {exc}); expected {what}") from exc
