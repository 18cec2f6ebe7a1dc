"""Communication accounting in bits (docs/methods.md, "Communication accounting").

Values are 32-bit. A sparse tensor costs 32*nnz plus, when the receiver does not already hold its
mask, the cheaper of an n-bit bitmap and nnz*ceil(log2 n)-bit indices; an unmasked tensor costs
32*size; a mask derived from a shared seed costs nothing.
"""
from __future__ import annotations

import math
from typing import Mapping

VALUE_BITS = 32


def mask_bits(nnz: int, size: int) -> int:
    return min(size, nnz * math.ceil(math.log2(size))) if size > 1 else size


def sparse_tensor_bits(nnz: int, size: int, mask_known: bool) -> int:
    return VALUE_BITS * nnz + (0 if mask_known else mask_bits(nnz, size))


def model_bits(nnz: Mapping[str, int], sizes: Mapping[str, int], dense_size: int, mask_known: bool) -> int:
    """One model transfer: the maskable tensors sparse (`nnz` per tensor), everything else dense."""
    return VALUE_BITS * dense_size + sum(sparse_tensor_bits(int(nnz[p]), sizes[p], mask_known) for p in sizes)


def dense_model_bits(total_size: int) -> int:
    return VALUE_BITS * total_size
