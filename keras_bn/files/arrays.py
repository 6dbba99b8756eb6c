"""Reading numpy `.npy`/`.npz` files a user gives as data (calibration, samples) safely.

`numpy.load` reads `.npz` members lazily, when each is first used, and trusts the header:
a pickled member raises later, a huge declared shape allocates what the file says, a
truncated member fails mid-read. Here every member's header is read and checked against
the bytes the file really holds before any data is read, and every failure is one
`InputError` naming the file and the member.
"""

import math
import os
import zipfile

import numpy as np

from keras_bn.errors import InputError

#: The most a deflate (gzip) stream expands: 1032 to 1 (zlib's documented bound), so
#: compressed data (a zip member, an HDF5 dataset) declaring more than that many times its
#: stored bytes is a lie.
MAX_EXPANSION = 1032


def zip_bomb(info):
    """Why the zip member `info` declares more than its compressed bytes can hold, or None."""
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        return (f"member {info.filename!r} declares {info.file_size} bytes from "
                f"{info.compress_size} compressed (a zip bomb)")
    return None


def load_arrays(path: str | os.PathLike,
                shown: str | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """The array of a `.npy` file, or the dict of arrays of a `.npz` file, by name
    (`shown` names the file in errors; default `path`).

    Raises:
      InputError: not a numpy file, an object (pickled) array, a declared shape larger
        than the file holds, or a truncated or corrupt member.
    """
    shown = shown or os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as error:
        raise InputError(f"{shown}: cannot read it ({error.strerror or error})") from error
    if magic == b"\x93NUMPY":
        with open(path, "rb") as f:
            return _read_array(f, _file_size(f), shown, None)
    if not zipfile.is_zipfile(path):
        raise InputError(f"{shown}: not a .npy or .npz numpy file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if not members:
                raise InputError(f"{shown}: an .npz file with no arrays")
            return {m.filename.removesuffix(".npy"): _member(archive, m, shown)
                    for m in members}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InputError(f"{shown}: a corrupt .npz file ({error})") from error


def _member(archive, info, path):
    bomb = zip_bomb(info)
    if bomb:
        raise InputError(f"{path}: {bomb}")
    with archive.open(info) as f:
        return _read_array(f, info.file_size, path, info.filename)


def _read_array(f, size, path, member):
    where = f"{path}" + (f", member {member!r}" if member else "")
    try:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                  np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f)
        if dtype.hasobject:
            raise InputError(f"{where}: an array of Python objects (stored pickled); "
                             "only numeric arrays are read")
        declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        available = size - f.tell()
        if declared > available:
            raise InputError(f"{where}: declares shape {shape} of {dtype} ({declared} "
                             f"bytes) but holds {available} bytes (truncated or forged)")
        data = np.frombuffer(f.read(declared), dtype=dtype)
        if data.nbytes != declared:
            raise InputError(f"{where}: truncated ({data.nbytes} of {declared} bytes)")
        return data.reshape(shape, order="F" if fortran else "C").copy()
    except (ValueError, OSError, EOFError, OverflowError, zipfile.BadZipFile) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{where}: not a readable numpy array ({error})") from error


def _file_size(f):
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    return size
