"""Writing output files: never over an input, never partial, readable as any file is.

Every file keras_bn writes (a folded model, an ONNX or TFLite file) goes through
`atomic_path`: the extension must match the format, the output may not be one of the
inputs (same path, a link to it, or the same inode), the file is written to a temporary
name next to its destination and renamed only once complete and verified, and it gets the
permissions `open()` would give a new file under the user's umask (an overwritten file
keeps its own). Missing parent folders are created.
"""

import contextlib
import os
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
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keras_bn-", suffix=os.path.splitext(path)[1],
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode(path))  # mkstemp made it 0o600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
