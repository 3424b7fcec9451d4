"""CuPy's names on NumPy arrays, with CuPy's capture rules (see ../README.md)."""

import numpy as _np

from . import cuda, random  # noqa: F401


def _capturing() -> bool:
    return cuda.CAPTURING[0]


def _refuse(what: str) -> None:
    if _capturing():
        raise RuntimeError(f"fake cupy: {what} during stream capture")


def _is_mask(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, _np.ndarray) and k.dtype == bool for k in keys)


class ndarray(_np.ndarray):  # noqa: N801 (CuPy's name)
    """A "device" array: host copies and cuBLAS raise during capture, as in CuPy."""

    def __float__(self):
        _refuse("float() of a device array (a device-to-host copy)")
        return float(_np.asarray(self))

    def __int__(self):
        _refuse("int() of a device array (a device-to-host copy)")
        return int(_np.asarray(self))

    def __bool__(self):
        _refuse("a branch on a device array (a device-to-host copy)")
        return bool(_np.asarray(self))

    def item(self, *args):
        _refuse("item() of a device array (a device-to-host copy)")
        return _np.asarray(self).item(*args)

    def tolist(self):
        _refuse("tolist() of a device array (a device-to-host copy)")
        return _np.asarray(self).tolist()

    def __getitem__(self, key):
        if _is_mask(key):
            _refuse("boolean mask indexing (its size is read on the host)")
        item = _np.ndarray.__getitem__(self, key)
        return _np.asarray(item).view(ndarray) if isinstance(item, _np.generic) else item  # CuPy: a 0-d array

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
        if func in _JOINS:
            _check_join(args[0])
        if func in _CUBLAS:
            _refuse(f"calling cuBLAS ({func.__name__}) is unsupported")
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


def _check_join(arrays) -> None:
    if len(arrays) > 8:  # CuPy copies the addresses of more than eight arrays from the host
        _refuse(f"joining {len(arrays)} arrays (their addresses are copied from the host)")


_JOINS = (_np.concatenate, _np.stack, _np.hstack, _np.vstack)
_CUBLAS = (_np.matmul, _np.dot, _np.vdot, _np.inner, _np.outer, _np.tensordot, _np.einsum)


def concatenate(arrays, axis=0):
    _check_join(arrays)
    return _device(_np.concatenate(arrays, axis=axis))


def stack(arrays, axis=0):
    _check_join(arrays)
    return _device(_np.stack(arrays, axis=axis))


def where(*args):
    return _device(_np.where(*args))


class RawModule:
    """Compiles nothing: the tests replace the backend's rollout with the NumPy one."""

    def __init__(self, code):
        self.code = code

    def get_function(self, name):
        return None


def __getattr__(name):  # the rest of CuPy's names: NumPy's (ufuncs keep the device array type)
    function = getattr(_np, name)
    if function not in _CUBLAS:
        return function

    def cublas(*args, **kwargs):
        _refuse(f"calling cuBLAS ({name}) is unsupported")
        return _device(function(*args, **kwargs))

    return cublas
