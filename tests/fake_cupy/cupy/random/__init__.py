"""XORWOW and Generator by name; draws from NumPy's generator as device arrays."""

import numpy as _np


class XORWOW:
    def __init__(self, seed, size=-1):
        self.seed = seed


class Generator:
    def __init__(self, bit_generator):
        self._rng = _np.random.default_rng(bit_generator.seed)

    def standard_normal(self, size, dtype=_np.float64):
        from cupy import ndarray

        return self._rng.standard_normal(size).astype(dtype).view(ndarray)

    def random(self, size, dtype=_np.float64):
        from cupy import ndarray

        return self._rng.random(size).astype(dtype).view(ndarray)
