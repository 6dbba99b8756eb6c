"""The private copy a model is checked and loaded from, so the file cannot change between
the check and the load, and the copy holds nothing from outside the user's file.

A SavedModel folder is copied entry by entry without following symbolic links: a link
that leaves the folder, cannot be resolved (a loop, a missing target) or names a folder is
refused in one line; a link to a file inside the folder is recreated as a link inside the
copy. Only regular files and folders are copied (a FIFO or a device would block or read
outside the model).
"""

import os
import shutil
import stat

from keras_bn.errors import InputError, UnsafeModelError


def private_copy(path, destination, shown):
    """Copies the model file or SavedModel folder at `path` to `destination`.

    Raises:
      UnsafeModelError: a symbolic link in a SavedModel folder that leaves it or loops.
      InputError: an entry that is not a regular file, folder or link inside the folder.
    """
    if not os.path.isdir(path):
        shutil.copyfile(path, destination)  # the user named this path: a link is theirs
        return
    root = os.path.realpath(path)
    os.mkdir(destination)
    for folder, dirs, files in os.walk(path):  # os.walk never descends into a link
        relative = os.path.relpath(folder, path)
        target_folder = os.path.normpath(os.path.join(destination, relative))
        for name in sorted(dirs) + sorted(files):
            source = os.path.join(folder, name)
            copy = os.path.join(target_folder, name)
            mode = os.lstat(source).st_mode
            if stat.S_ISLNK(mode):
                _link(source, copy, root, os.path.join(relative, name), shown)
                if name in dirs:
                    dirs.remove(name)
            elif stat.S_ISDIR(mode):
                os.mkdir(copy)
            elif stat.S_ISREG(mode):
                shutil.copyfile(source, copy, follow_symlinks=False)
            else:
                raise InputError(f"{shown}: {os.path.join(relative, name)!r} is not a regular "
                                 "file or folder (a FIFO, socket or device); refusing to "
                                 "read it as part of a model")


def _link(source, copy, root, relative, shown):
    try:
        target = os.path.realpath(source, strict=True)
    except OSError as error:
        raise UnsafeModelError(f"{shown}: the symbolic link {relative!r} cannot be resolved "
                               f"({error.strerror or error}: a loop or a missing target); "
                               "refusing to follow it") from None
    if os.path.commonpath([root, target]) != root:
        raise UnsafeModelError(f"{shown}: the symbolic link {relative!r} points outside the "
                               f"model folder (to {target!r}); refusing to follow it")
    if os.path.isdir(target):
        raise UnsafeModelError(f"{shown}: the symbolic link {relative!r} names a folder "
                               "(a SavedModel needs none); refusing to follow it")
    os.symlink(os.path.relpath(target, os.path.dirname(os.path.join(root, relative))), copy)
