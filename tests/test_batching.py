import pytest
import torch

from slwtune.batching import DeviceBatches, apply_seqlen, reshape_batch, truncate_batch


def windows(b=3, e=16):
    # each row is consecutive integers so alignment is checkable: target = input + 1
    return torch.arange(b)[:, None] * 1000 + torch.arange(e + 1)[None, :]


def test_truncate_keeps_first_tokens_and_aligns_targets():
    x, y, n = truncate_batch(windows(), 4)
    assert x.shape == y.shape == (3, 4)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[1], torch.tensor([1000, 1001, 1002, 1003]))
    assert n == 12


def test_truncate_at_full_length_uses_whole_window():
    x, y, n = truncate_batch(windows(e=16), 16)
    assert torch.equal(y, x + 1) and n == 3 * 16


def test_reshape_keeps_tokens_and_aligns_targets():
    x, y, n = reshape_batch(windows(b=2, e=16), 4)
    assert x.shape == (8, 4)
    assert torch.equal(y, x + 1)
    assert n == 2 * 16  # no token dropped when L divides e


def test_reshape_drops_only_the_remainder():
    x, y, n = reshape_batch(windows(b=2, e=16), 5)
    assert x.shape == (6, 5) and n == 30
    assert torch.equal(y, x + 1)


@pytest.mark.parametrize("length", [0, 17])
def test_out_of_range_length_rejected(length):
    with pytest.raises(ValueError, match=f"length={length}"):
        apply_seqlen(windows(e=16), length)


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="pad"):
        apply_seqlen(windows(), 4, mode="pad")


@pytest.mark.parametrize("length", [4, 8, 16])
def test_reshape_is_contiguous_at_every_length(length):
    # a compiled model guards on strides: the layout must not change when one chunk is left
    x, y, _ = reshape_batch(windows(), length)
    assert x.is_contiguous() and y.is_contiguous()


def test_device_batches_prefetch_gives_the_same_windows_once():
    reads = []

    def read(step):
        reads.append(step)
        return windows() + step

    batches = DeviceBatches(read, torch.device("cpu"))
    first = batches.get(1)
    batches.prefetch(2)
    assert reads == [1, 2]  # read ahead, before it is asked for
    assert torch.equal(batches.get(2), windows() + 2) and reads == [1, 2]
    assert torch.equal(batches.get(2), windows() + 2) and reads == [1, 2, 2]  # used once, then read again
    batches.prefetch(3)
    assert torch.equal(batches.get(5), windows() + 5)  # a stale read-ahead is not used
    assert torch.equal(first, windows() + 1)
