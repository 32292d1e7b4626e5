"""Released CoDi `.pth` files, opened without reading their tensors.

`torch.load(mmap=True)` maps the file and unpickles only the key -> tensor index; a tensor's bytes are
paged in from disk when its numpy view is first read, and `release` drops them again once the tensor is
converted, so converting a 12 GB file holds a few tensors' pages at a time, not the file.
Before that, every record of the zip container is checked against the CRC-32 that `torch.save` stores
with it: a truncated download, a flipped byte or a file in the pre-1.6 (non-zip) format is one line of
`ReleasedFileError`, not a traceback or silently wrong weights.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import pathlib
import sys
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np


class ReleasedFileError(ValueError):
    """A released file that cannot be used, with a one-line reason (the caller adds the file name)."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_container(path: pathlib.Path) -> None:
    """The file is a complete zip container whose records all match their CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ReleasedFileError(f"not a readable PyTorch zip checkpoint: truncated, corrupt, or saved in the "
                                f"legacy (pre-1.6) format ({_first_line(err)})") from None
    if bad is not None:
        raise ReleasedFileError(f"record {bad} fails its CRC check: the file is corrupt or partially downloaded")


def open_state_dict(path) -> dict:
    """{key: torch.Tensor} of a released file, memory-mapped (see the module docstring)."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise ReleasedFileError("no such file")
    check_container(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / ... for unusable pickles
        raise ReleasedFileError(f"cannot be loaded as a state dict ({type(err).__name__}: "
                                f"{_first_line(err)})") from None
    # The original loads these files straight into `CoDi.load_state_dict`; a Lightning-style wrapper is
    # accepted too, as the sampling pipeline's `released:` source does.
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ReleasedFileError(f"holds a {type(loaded).__name__}, not a state dict of tensors")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ReleasedFileError(f"is not a state dict of tensors: entry {key!r} is a {type(value).__name__}")
    return dict(loaded)


def dtype_name(tensor) -> str:
    """numpy's name for a torch tensor's dtype ("float32", "float16", "bfloat16", "int64", ...)."""
    return str(tensor.dtype).removeprefix("torch.")


def to_numpy(tensor) -> np.ndarray:
    """A numpy view of a CPU tensor, sharing its (mapped) memory; bfloat16 through ml_dtypes, which numpy
    lacks and torch's .numpy() refuses."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def release(tensor) -> None:
    """Drop a memory-mapped tensor's pages from this process (Linux; elsewhere the kernel keeps them until it
    needs the memory). They are clean pages of the file, which torch maps and nothing writes, so touching
    the tensor again reads them back from the page cache or disk; a page shared with a neighbouring
    tensor is read back the same way. Only for tensors of `open_state_dict`: on anonymous memory the
    same call would zero the data."""
    if _LIBC is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = start - start % mmap.PAGESIZE
    _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), mmap.MADV_DONTNEED)
