"""Checking an HDF5 file's structure before a Keras loader reads it.

HDF5 lets a dataset live outside the file: external raw storage (a path read when the
dataset is read: the CVE-2026-1669 pattern), external links to objects of other files,
and virtual datasets mapped from other files. A model file needs none of them. A dataset
may also declare far more data than the file holds (its reads return fill values), which
makes the loader allocate what the file chose. All of these are refused before tf-keras or
Keras opens the file; the weights inside a `.keras` zip are checked the same way.
"""

import os

from keras_bn.errors import InputError
from keras_bn.files.arrays import MAX_EXPANSION


def check_hdf5(path, shown):
    """Raises `UnsafeModelError` naming the first object of the HDF5 file at `path` (named
    `shown` in errors) that reads outside the file or declares more than it holds.

    Raises:
      UnsafeModelError: an external link, external storage, a virtual dataset, or a
        dataset larger than the file can hold.
      InputError: the file cannot be read as HDF5.
    """
    import h5py

    from keras_bn.errors import UnsafeModelError

    size = os.path.getsize(path)
    problems = []
    try:
        with h5py.File(path, "r") as f:
            def visit(name, link):
                if isinstance(link, h5py.ExternalLink):
                    problems.append(f"'{name}' is a link to {link.filename!r} "
                                    "(it would read another file)")
                elif isinstance(link, h5py.HardLink):
                    obj = f.get(name)
                    if isinstance(obj, h5py.Dataset):
                        problem = _dataset_problem(obj, size)
                        if problem:
                            problems.append(f"dataset '{name}' {problem}")

            f.visititems_links(visit)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise InputError(f"{shown}: unreadable HDF5 file ({error})") from error
    if problems:
        raise UnsafeModelError(
            f"{shown}: refusing an HDF5 file that reads outside itself ({problems[0]}"
            + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")
            + "). Keras model files never need this; pass --unsafe (unsafe=True) only if "
            "you trust where the file comes from.")


def _dataset_problem(dataset, file_size):
    """What is wrong with one dataset, or None."""
    external = dataset.external
    if external:
        return f"has external storage in {external[0][0]!r} (it would read that file)"
    if dataset.is_virtual:
        return "is a virtual dataset (it maps data from other files)"
    declared = dataset.size * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0  # compressed
    bound = MAX_EXPANSION * stored if filtered else file_size
    if declared > bound:
        return (f"declares {declared} bytes ({dataset.shape} of {dataset.dtype}) but the "
                f"file can hold at most {bound}")
    return None
