"""CuPy's names on NumPy arrays, with CuPy's capture rules (see ../README.md)."""

import numpy as _np

from . import cuda, random  # noqa: F401


def _capturing() -> bool:
    return cuda.CAPTURING[0]


class ndarray(_np.ndarray):  # noqa: N801 (CuPy's name)
    """A "device" array: host copies and cuBLAS raise during capture, as in CuPy."""

    def get(self, stream=None):
        if _capturing():
            raise RuntimeError("fake cupy: a device-to-host copy during stream capture")
        return _np.array(self)

    def set(self, arr, stream=None):
        if _capturing():
            raise RuntimeError("fake cupy: a host-to-device copy during stream capture")
        self[...] = arr

    @property
    def data(self):
        return _Pointer(self.__array_interface__["data"][0])

    def __matmul__(self, other):
        if _capturing():
            raise NotImplementedError("fake cupy: calling cuBLAS API during stream capture is unsupported")
        return _np.ndarray.__matmul__(self, other)

    def __array_function__(self, func, types, args, kwargs):  # np.stack(...) of device arrays stays on the device
        types = tuple(_np.ndarray if t is ndarray else t for t in types)
        result = _np.ndarray.__array_function__(self, func, types, args, kwargs)
        return result.view(ndarray) if type(result) is _np.ndarray else result


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


def _device(x):
    return x.view(ndarray) if isinstance(x, _np.ndarray) else x


def _from_host(a):
    if _capturing() and not isinstance(a, ndarray):
        raise RuntimeError("fake cupy: the current stream is capturing, so H2D transfers are disallowed")


def asarray(a, dtype=None):
    _from_host(a)
    return _device(_np.asarray(a, dtype=dtype))


def array(a, dtype=None, copy=True):
    _from_host(a)
    return _device(_np.array(a, dtype=dtype))


def ascontiguousarray(a, dtype=None):
    return _device(_np.ascontiguousarray(a, dtype=dtype))


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else _np.asarray(a)


def empty(shape, dtype=_np.float64):
    return _device(_np.empty(shape, dtype))


def zeros(shape, dtype=_np.float64):
    return _device(_np.zeros(shape, dtype))


def concatenate(arrays):
    return _device(_np.concatenate(arrays))


def where(*args):
    return _device(_np.where(*args))


class RawModule:
    """Compiles nothing: the tests replace the backend's rollout with the NumPy one."""

    def __init__(self, code):
        self.code = code

    def get_function(self, name):
        return None


def __getattr__(name):  # the rest of CuPy's names: NumPy's (ufuncs keep the device array type)
    return getattr(_np, name)
