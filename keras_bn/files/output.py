"""Writing output files: never over an input, never partial, readable as any file is.

Every file keras_bn writes (a folded model, an ONNX or TFLite file) goes through
`atomic_path`: the extension must match the format, the output may not be one of the
inputs (same path, a link to it, or the same inode), the file is written to a temporary
name next to its destination and renamed only once complete and verified, and it gets the
permissions `open()` would give a new file under the user's umask (an overwritten file
keeps its own). Missing parent folders are created. Within `all_or_nothing`, the files
of several steps are renamed into place together at the end, or none is.
"""

import contextlib
import contextvars
import os
import secrets
import shutil
import tempfile

from keras_bn.errors import InputError


def _umask():
    """The process's umask, read without changing it where Linux says it (a umask
    set-and-restore would briefly change it for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path):
    """The mode the file at `path` should end with: its own if it exists, else what
    `open(path, "w")` would create (0o666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def check_output(path, suffixes, inputs=()):
    """Raises InputError when `path` does not end in one of `suffixes` or is one of
    `inputs` (the same path, a link to it, or a hard link: the same inode)."""
    path = os.fspath(path)
    if suffixes and not path.endswith(tuple(suffixes)):  # as tf-keras: case matters
        raise InputError(f"{path}: the output must end in {' or '.join(suffixes)} for this "
                         "format (refusing to write one format under another's name)")
    for source in inputs:
        source = os.fspath(source)
        same = os.path.realpath(path) == os.path.realpath(source) or (
            os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source))
        if same:
            raise InputError(f"{path}: this is the input file {source}; writing it would "
                             "destroy the input. Choose another output path.")


@contextlib.contextmanager
def atomic_path(path, suffixes=(), inputs=()):
    """Yields a temporary path next to `path`; renames it onto `path` only if the block
    succeeds (and removes it otherwise), so `path` never holds a partial or unverified
    file. See the module docstring for the checks and the permissions.

    Args:
      path: The destination.
      suffixes: Extensions the destination may have, e.g. (".onnx",); empty: any.
      inputs: Paths the destination may not be.

    Raises:
      InputError: a wrong extension, or the destination is an input.
    """
    path = os.fspath(path)
    check_output(path, suffixes, inputs)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission...
        raise InputError(f"{path}: cannot create its folder {directory} "
                         f"({error.strerror}: {error.filename})") from error
    fd, tmp = tempfile.mkstemp(prefix=".keras_bn-", suffix=os.path.splitext(path)[1],
                               dir=directory)
    os.close(fd)
    batch, handed_over = _BATCH.get(), False
    try:
        yield tmp
        os.chmod(tmp, new_file_mode(path))  # mkstemp made it 0o600
        if batch is None:
            os.replace(tmp, path)
        else:  # all_or_nothing renames it with the others, or removes it
            batch.append((tmp, path))
            handed_over = True
    finally:
        if not handed_over and os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path, inputs=()):
    """`atomic_path` for a folder (a SavedModel): yields a temporary path next to `path`
    to write the folder at, and moves it onto `path` only if the block succeeds; a
    folder already at `path` is replaced only then.

    Raises:
      InputError: the destination is an input, or an existing file that is not a folder.
    """
    path = os.fspath(path)
    check_output(path, (), inputs)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{path}: a file is there; a SavedModel is a folder. Choose "
                         "another output path.")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise InputError(f"{path}: cannot create its folder {directory} "
                         f"({error.strerror}: {error.filename})") from error
    scratch = tempfile.mkdtemp(prefix=".keras_bn-", dir=directory)
    try:
        tmp = os.path.join(scratch, "new")
        yield tmp
        if os.path.exists(path):
            os.replace(path, os.path.join(scratch, "old"))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: The files verified so far inside `all_or_nothing`: (temporary path, destination).
_BATCH: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "keras_bn_output_batch", default=None)


@contextlib.contextmanager
def all_or_nothing():
    """Every file `atomic_path` completes inside the block stays under its temporary name
    until the block ends: then all are renamed into place, or, when the block raises,
    none is (each temporary file is removed and any earlier file at a destination is
    left as it was). Should a rename itself fail at the end, the destinations already
    replaced get their earlier files back (or are removed where there was none).

    Raises:
      OSError: a rename at the end failed (after the rollback).
    """
    batch: list = []
    token = _BATCH.set(batch)
    try:
        yield
    except BaseException:
        _remove(tmp for tmp, _ in batch)
        raise
    finally:
        _BATCH.reset(token)
    _commit(batch)


def _commit(batch):
    """Renames each (temporary, destination) of `batch`; on a failure, undoes those done."""
    backups, done = {}, []
    try:
        for tmp, path in batch:
            if os.path.exists(path):  # a hard link keeps the old file for a rollback
                backup = os.path.join(os.path.dirname(os.path.abspath(path)),
                                      f".keras_bn-old-{secrets.token_hex(8)}")
                os.link(path, backup)  # fails rather than replace an existing name
                backups[path] = backup
            os.replace(tmp, path)
            done.append(path)
    except OSError:
        for path in done:
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                os.remove(path)
        raise
    finally:
        _remove(tmp for tmp, _ in batch)
        _remove(backups.values())


def _remove(paths):
    for path in list(paths):
        if os.path.exists(path):
            os.remove(path)
