"""The server's hot path: weighted sums of many clients' tensors.

    weighted_sum(x, c)[n] = c_0 x_0[n] + c_1 x_1[n] + ...      (in the order given)

accumulated in ``dtype`` with each product rounded in ``dtype`` before it is added, which
is the arithmetic of Flower's ``aggregate_arrayrecords`` (``x * w`` then ``+=``) in
float32; so FedAvg's global model is bit for bit Flower's. Written by hand because
Flower's version (``Array.numpy()`` then ``x * w``) copies every reply and allocates a
product per tensor: here the inputs are read in place (``pollen.records.array_views``)
and the accumulator is filled in chunks small enough to stay in cache while every
client's slice is added to it, so each reply byte is read once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Tensors = dict[str, np.ndarray]
CHUNK = 1 << 16  # elements of the accumulator (and of its scratch) handled at a time


def weighted_sum(models: Sequence[Mapping[str, np.ndarray]], coefficients: Sequence[float],
                 dtype: type = np.float32) -> Tensors:
    """sum_i c_i x_i for every tensor name of ``models[0]``, as float32 arrays."""
    if not models or len(models) != len(coefficients):
        raise ValueError(f"{len(models)} models and {len(coefficients)} coefficients")
    coefficients = [np.dtype(dtype).type(c) for c in coefficients]  # as numpy rounds them
    result = {}
    for name, first in models[0].items():
        if np.size(first) <= CHUNK:  # the whole accumulator stays in cache
            total = np.multiply(first, coefficients[0], dtype=dtype)
            product = np.empty_like(total)
            for model, c in zip(models[1:], coefficients[1:]):
                np.multiply(model[name], c, out=product)
                np.add(total, product, out=total)
            result[name] = total.astype(np.float32, copy=False)
            continue
        shape = np.shape(first)
        inputs = [np.asarray(m[name]).reshape(-1) for m in models]
        out = np.empty(inputs[0].size, dtype)
        scratch = np.empty(min(out.size, CHUNK), dtype)
        for start in range(0, out.size, CHUNK):
            stop = min(start + CHUNK, out.size)
            total, product = out[start:stop], scratch[:stop - start]
            np.multiply(inputs[0][start:stop], coefficients[0], out=total, dtype=dtype)
            for flat, c in zip(inputs[1:], coefficients[1:]):
                np.multiply(flat[start:stop], c, out=product, dtype=dtype)
                np.add(total, product, out=total)
        result[name] = out.reshape(shape).astype(np.float32, copy=False)
    return result


def weighted_mean(models: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  dtype: type = np.float32) -> Tensors:
    """sum_i (w_i / sum_j w_j) x_i: FedAvg's mean, weighted by example counts."""
    total = float(sum(weights))
    return weighted_sum(models, [w / total for w in weights], dtype)
