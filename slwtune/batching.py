"""Applying the current sequence length to a batch (slw-spec section 3).

A batch arrives as raw windows of `full_length + 1` tokens, shape (B, e+1), as
aligned inputs and targets (B, e) each (`*_pair`), or as a Hugging Face-style
dict (`apply_seqlen_dict`). Truncate keeps the first L tokens of every row;
reshape re-chunks the same tokens into more rows of L. Each returns the number
of tokens actually trained on.
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
    return reshape_pair(*split_inputs_targets(windows), length)


def truncate_pair(x: torch.Tensor, y: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Aligned inputs and targets (B, e) (nanoGPT's get_batch) cut to (B, L)."""
    _check_pair(x, y, length)
    x, y = x[:, :length], y[:, :length]
    return x, y, x.numel()


def reshape_pair(x: torch.Tensor, y: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Aligned inputs and targets (B, e) re-chunked into (B * (e // L), L)."""
    _check_pair(x, y, length)
    used = (x.shape[1] // length) * length
    # contiguous at every length (one chunk is a strided view otherwise): a compiled model
    # guards on input strides, and a change of layout would be one more graph
    x = x[:, :used].reshape(-1, length).contiguous()  # (B * chunks, L)
    y = y[:, :used].reshape(-1, length).contiguous()
    return x, y, x.numel()


def _check_pair(x: torch.Tensor, y: torch.Tensor, length: int) -> None:
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"inputs {tuple(x.shape)} and targets {tuple(y.shape)} must both be (batch, seq)")
    if not 0 < length <= x.shape[1]:
        raise ValueError(f"length={length} must be in 1..{x.shape[1]} (the batch's sequence length)")


def truncate_attention_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Cut a 4-D attention mask (B, H, e, e) to (B, H, L, L)."""
    return mask[:, :, :length, :length]


def apply_seqlen(windows: torch.Tensor, length: int, mode: str = "truncate"):
    """Dispatch on the SLW mode: returns (inputs, targets, tokens)."""
    if mode == "truncate":
        return truncate_batch(windows, length)
    if mode == "reshape":
        return reshape_batch(windows, length)
    raise ValueError(f"unknown slw mode {mode!r}; expected truncate or reshape")


# Keys of a Hugging Face-style batch that hold one position id per token: rebuilt, not
# re-chunked, when a batch is reshaped (row i of the new batch starts at position 0).
POSITION_KEYS = ("position_ids",)


def apply_seqlen_dict(batch: dict, length: int, mode: str = "truncate",
                      seq_key: str = "input_ids") -> tuple[dict, int]:
    """A dict batch (Hugging Face style: input_ids, attention_mask, labels, ...) at `length`.

    Every tensor whose dim 1 is the sequence (B, T[, ...]) is cut (truncate) or re-chunked
    (reshape) together; a 4-D attention mask (B, H, T, T) is cut to [:, :, :L, :L]. A batch
    already shorter than `length` (padded to its longest row) is left as it is. Returns the
    new dict and the tokens trained on: attention_mask ones when there is a mask, else rows*L.
    """
    if seq_key not in batch or not isinstance(batch[seq_key], torch.Tensor) or batch[seq_key].dim() < 2:
        raise ValueError(f"batch[{seq_key!r}] must be a (batch, seq) tensor; keys: {sorted(batch)}")
    if length <= 0:
        raise ValueError(f"length={length} must be positive")
    rows, seq = batch[seq_key].shape[:2]
    length = min(length, seq)
    if mode == "truncate":
        out = {k: _truncate_value(k, v, rows, seq, length) for k, v in batch.items()}
    elif mode == "reshape":
        out = {k: _reshape_value(k, v, rows, seq, length) for k, v in batch.items()}
    else:
        raise ValueError(f"unknown slw mode {mode!r}; expected truncate or reshape")
    mask = out.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        tokens = int(mask.sum())
    else:
        tokens = out[seq_key].shape[0] * out[seq_key].shape[1]
    return out, tokens


def _is_seq(v, rows: int, seq: int) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == rows and v.shape[1] == seq


def _is_4d_mask(v, rows: int, seq: int) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == rows and tuple(v.shape[2:]) == (seq, seq)


def _truncate_value(key: str, v, rows: int, seq: int, length: int):
    if _is_4d_mask(v, rows, seq):
        return truncate_attention_mask(v, length)  # (B, H, L, L)
    if _is_seq(v, rows, seq):
        return v[:, :length]
    return v


def _reshape_value(key: str, v, rows: int, seq: int, length: int):
    chunks = seq // length
    if not isinstance(v, torch.Tensor):
        return v
    if _is_4d_mask(v, rows, seq):
        raise ValueError(f"batch[{key!r}]: a 4-D attention mask cannot be reshaped; use mode='truncate'")
    if not _is_seq(v, rows, seq):
        if v.dim() >= 1 and v.shape[0] == rows and chunks > 1:
            raise ValueError(f"batch[{key!r}] has shape {tuple(v.shape)}: one value per row cannot follow "
                             "a reshape into more rows; use mode='truncate'")
        return v
    used = chunks * length
    if key in POSITION_KEYS:
        return torch.arange(length, device=v.device, dtype=v.dtype).expand(rows * chunks, length).contiguous()
    return v[:, :used].reshape(rows * chunks, length, *v.shape[2:])  # (B * chunks, L, ...)
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
