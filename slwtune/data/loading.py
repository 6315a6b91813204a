"""Reading a prepared dataset for training: memmapped tokens and deterministic windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slwtune.data.meta import DatasetMeta
from slwtune.errors import DataError


def open_tokens(data_dir: str | Path, split: str) -> np.memmap:
    """The tokens of `split` ("train" or "val") as a read-only memmap."""
    meta = DatasetMeta.load(data_dir)
    return np.memmap(meta.bin_path(split), dtype=np.dtype(meta.dtype).newbyteorder("<"), mode="r")


def _check_window(tokens: np.ndarray, window: int, batch_size: int) -> None:
    if window < 1 or batch_size < 1:
        raise DataError(f"window={window}, batch_size={batch_size}: both must be positive")
    if len(tokens) < window:
        raise DataError(f"token file has {len(tokens)} tokens, shorter than one window of {window}; "
                        "use more text, a larger val_fraction, or a shorter full_length")


def _gather(tokens: np.ndarray, starts: np.ndarray, window: int) -> torch.Tensor:
    """Rows tokens[s:s+window] for each start, as an int64 tensor of shape (len(starts), window)."""
    # Fancy indexing a memmap reads only these rows from disk.
    return torch.from_numpy(tokens[starts[:, None] + np.arange(window)].astype(np.int64))


class WindowSampler:
    """Random training windows; batch(step) depends only on (seed, rank, step), so a resumed run
    draws exactly the batches the uninterrupted run would have."""

    def __init__(self, tokens: np.ndarray, window: int, batch_size: int, seed: int = 0, rank: int = 0):
        _check_window(tokens, window, batch_size)
        if seed < 0 or rank < 0:
            raise DataError(f"seed={seed}, rank={rank}: both must be >= 0")
        self.tokens, self.window, self.batch_size, self.seed, self.rank = tokens, window, batch_size, seed, rank

    def batch(self, step: int) -> torch.Tensor:
        """The windows for optimizer step `step`, shape (batch_size, window), int64."""
        if step < 0:
            raise DataError(f"step={step}: must be >= 0")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.rank, step)))
        starts = rng.integers(0, len(self.tokens) - self.window + 1, size=self.batch_size)
        return _gather(self.tokens, starts, self.window)


def eval_batches(tokens: np.ndarray, window: int, batch_size: int, n_batches: int) -> list[torch.Tensor]:
    """`n_batches` fixed batches of evenly spaced windows covering the file (the same every call)."""
    _check_window(tokens, window, batch_size)
    if n_batches < 1:
        raise DataError(f"n_batches={n_batches}: must be positive")
    starts = np.linspace(0, len(tokens) - window, n_batches * batch_size).round().astype(np.int64)
    return [_gather(tokens, s, window) for s in starts.reshape(n_batches, batch_size)]
