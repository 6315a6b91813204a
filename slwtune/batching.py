"""Applying the current sequence length to a batch (slw-spec section 3).

A batch arrives as raw windows of `full_length + 1` tokens, shape (B, e+1).
Both modes return aligned (inputs, targets) of shape (rows, L) and the number
of tokens actually trained on, `rows * L`.
"""

from __future__ import annotations

from typing import Callable

import torch


def split_inputs_targets(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n+1) windows -> inputs (B, n) and next-token targets (B, n)."""
    return windows[:, :-1], windows[:, 1:]


def truncate_batch(windows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The paper's truncation: keep the first `length` tokens of every sample.

    Cut the raw windows to length+1 *before* splitting, so the target of the
    last kept input is the token right after it, not the window's last token.
    """
    full = windows.shape[1] - 1
    if not 0 < length <= full:
        raise ValueError(f"length={length} must be in 1..{full} (the windows' full length)")
    x, y = split_inputs_targets(windows[:, : length + 1])  # (B, L), (B, L)
    return x, y, x.numel()


def reshape_batch(windows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Re-chunk each sample's tokens into rows of `length`: more rows, no token dropped
    (up to the remainder `full % length` per sample, which cannot fill a row)."""
    full = windows.shape[1] - 1
    if not 0 < length <= full:
        raise ValueError(f"length={length} must be in 1..{full} (the windows' full length)")
    x, y = split_inputs_targets(windows)  # (B, e)
    chunks = full // length
    used = chunks * length
    # contiguous at every length (one chunk is a strided view otherwise): a compiled model
    # guards on input strides, and a change of layout would be one more graph
    x = x[:, :used].reshape(-1, length).contiguous()  # (B * chunks, L)
    y = y[:, :used].reshape(-1, length).contiguous()
    return x, y, x.numel()


def apply_seqlen(windows: torch.Tensor, length: int, mode: str = "truncate"):
    """Dispatch on the SLW mode: returns (inputs, targets, tokens)."""
    if mode == "truncate":
        return truncate_batch(windows, length)
    if mode == "reshape":
        return reshape_batch(windows, length)
    raise ValueError(f"unknown slw mode {mode!r}; expected truncate or reshape")


class DeviceBatches:
    """The windows of each optimizer step on the device, the next step's read ahead.

    `get(step)` returns that step's windows (rows, e+1) on the device. `prefetch(step)` reads
    them now and starts their copy: called once the current step's work is queued on the
    device and before the host waits for it, it overlaps the host's reading (a memmap gather)
    with the device's compute. On CUDA the copy goes from pinned memory without blocking.
    """

    def __init__(self, read: Callable[[int], torch.Tensor], device: torch.device):
        self.read, self.device = read, device
        self._ahead: tuple[int, torch.Tensor] | None = None

    def _load(self, step: int) -> torch.Tensor:
        windows = self.read(step)
        if self.device.type == "cuda":
            # the caching host allocator keeps the pinned buffer until the copy has finished
            return windows.pin_memory().to(self.device, non_blocking=True)
        return windows.to(self.device)

    def get(self, step: int) -> torch.Tensor:
        if self._ahead is not None and self._ahead[0] == step:
            windows, self._ahead = self._ahead[1], None
            return windows
        return self._load(step)

    def prefetch(self, step: int) -> None:
        self._ahead = (step, self._load(step))
