"""The GPU backend: CuPy arrays, cuRAND noise, the task's rollout as one CUDA kernel, the Q on the device.

Everything MPPI does between receiving a state and sending an action stays on the GPU: noise from
cuRAND (CuPy's XORWOW generator, its state on the device), clipping, the fused rollout-and-cost kernel
(one thread per sample, compiled by NVRTC from the same C the CPU backend and the tests use:
onboard/backends/source.py), the ONNX Q through ONNX Runtime's TensorRT or CUDA provider with its inputs
and output bound to CuPy buffers (onboard/backends/device_q.py), the max-subtracted weights and the mean
update (CuPy reductions), and the warm start. All of it runs on one CUDA stream (MPPI enters `scope()`),
ONNX Runtime's work included.

A control step is some fifty small kernels, and launching them one by one from Python costs more than
running them. So from its second call per input shape a plan is a CUDA graph: captured once, then
replayed with the new state copied into its input buffer, and the results come back in one packed copy
(the step's only synchronisation). ONNX Runtime's run is captured inside the graph too, so a control
step is one graph launch. Where ONNX Runtime's provider cannot be captured, its run interrupts the
capture instead: it runs between two graphs, on its IO binding to the graph's buffers (one warning).
Where capture fails altogether the plan runs kernel by kernel, with one warning.
Float32 throughout, as ONNX models and GPUs run.

Install with `make setup GPU=1` (the gpu extra: cupy-cuda13x, onnxruntime-gpu with CUDA 13 and cuDNN).
"""

from __future__ import annotations

import contextlib
import functools
import logging

import numpy as np

from onboard.backends import check_rollout_shapes
from onboard.backends.device_q import DeviceOnnxQ
from onboard.backends.source import KERNEL_NAME, task_program
from onboard.tasks.base import Task

log = logging.getLogger("mpq.backends.cupy")
THREADS_PER_BLOCK = 128


def _cupy():
    try:
        import cupy
    except ImportError:
        raise RuntimeError("backend 'cupy' needs CuPy: make setup GPU=1 (the gpu extra), or use backend 'c'") from None
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device: CuPy raises its own CUDA errors
        raise RuntimeError(f"backend 'cupy' finds no usable CUDA device ({e}): use backend 'c' here") from None
    if devices == 0:
        raise RuntimeError("backend 'cupy' finds no CUDA device: use backend 'c' here")
    return cupy


class DeviceRNG:
    """cuRAND's XORWOW through CuPy, with the two draws MPPI makes (NumPy Generator's names).

    The generator's state lives on the device and each draw's kernel advances it, so a draw replayed
    in a CUDA graph gives new numbers every time (cuRAND's host API would repeat the captured ones).
    A draw launches one thread per generator state, each loading and storing its 48 bytes, so a draw
    costs as much as its states whatever its size: CuPy's default of 8 x 256 states per SM would make
    every small draw pay for hundreds of thousands. The states are sized to the first draw instead,
    about VALUES_PER_STATE values each."""

    VALUES_PER_STATE = 8

    def __init__(self, cupy, seed: np.random.SeedSequence):
        self.cupy, self.seed, self._generator = cupy, seed, None

    def generator(self, shape):
        """The generator, made at the first draw (always outside a capture: a plan is captured on its second run)."""
        if self._generator is None:
            cupy = self.cupy
            most = 8 * 256 * cupy.cuda.Device().attributes["MultiProcessorCount"]  # CuPy's default
            states = min(most, max(1024, -(-int(np.prod(shape)) // self.VALUES_PER_STATE)))
            self._generator = cupy.random.Generator(cupy.random.XORWOW(self.seed, size=states))
        return self._generator

    def standard_normal(self, shape, dtype=np.float32):
        return self.generator(shape).standard_normal(shape, dtype=dtype)

    def random(self, shape, dtype=np.float32):
        return self.generator(shape).random(shape, dtype=dtype)


class CupyBackend:
    name = "cupy"
    dtype = np.float32

    def __init__(self, task: Task, kernel: bool = True):
        """kernel=False: no analytic rollout kernel (the warp backend steps the MJCF and uses the rest)."""
        cupy = self.xp = _cupy()
        self.task = task
        # MPPI's CuPy work and ONNX Runtime's on one stream: ordered without host waits. A blocking stream
        # also orders against the default stream, where a caller's own CuPy work runs.
        self.stream = cupy.cuda.Stream()
        if kernel:
            self.module = cupy.RawModule(code=task_program(task, "float", device=True))  # NVRTC's default dialect
            self.kernel = self.module.get_function(KERNEL_NAME)
        self.graphs = True  # False: every plan kernel by kernel (the tests compare the two)
        self.captured: dict[tuple, CapturedCall | None] = {}  # None: capture failed, run kernel by kernel
        self.capture: CapturedCall | None = None  # the capture under way, which the Q may interrupt
        self._warm: set[tuple] = set()  # input shapes that have run once

    def scope(self):
        return self.stream

    @property
    def replays_graphs(self) -> bool:
        """Whether plans so far replay as CUDA graphs (False before any was captured, or if one failed)."""
        return bool(self.captured) and None not in self.captured.values()

    @property
    def replay_steps(self) -> int:
        """Graph launches and ONNX Runtime runs per replayed plan, the most over shapes (1: all in one graph)."""
        return max((len(c.steps) for c in self.captured.values() if c is not None), default=0)

    @functools.cached_property
    def memory_bytes(self) -> int:
        """The GPU's memory: what a plan's arrays must fit in."""
        return self.xp.cuda.Device().mem_info[1]

    def rng(self, seed: np.random.SeedSequence) -> DeviceRNG:
        return DeviceRNG(self.xp, seed)

    def to_host(self, *arrays):
        """One device-to-host copy for all of them (the step's only synchronisation), split again."""
        return unpack(pack(self.xp, arrays).get(), arrays)

    def run_as_graph(self, fn, inputs, host_outputs, uses=()):
        """fn(*inputs) -> outputs, the first host_outputs of them brought to the host in one copy.

        The first call per input shape (and per object in `uses`) runs kernel by kernel, which also
        compiles kernels and lets ONNX Runtime and cuBLAS set up. The second captures fn as a CUDA graph
        and every later one replays it: one graph with ONNX Runtime's runs inside, or where that capture
        fails, graphs with ONNX Runtime's runs between them."""
        key = (fn.__name__, tuple((x.shape, x.dtype.str) for x in inputs), tuple(id(u) for u in uses))
        if self.graphs and key in self._warm and key not in self.captured:
            self.captured[key] = None  # kernel by kernel from now on, unless a capture below succeeds
            calls_onnx_runtime = any(isinstance(u, DeviceOnnxQ) and u.session is not None for u in uses)
            for inline in (True, False) if calls_onnx_runtime else (True,):
                try:
                    self.captured[key] = CapturedCall(self, fn, inputs, host_outputs, uses, inline=inline)
                    break
                except Exception as e:  # CUDA and CuPy errors of an operation that cannot be captured
                    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    if inline and calls_onnx_runtime:
                        log.warning(
                            "the plan with ONNX Runtime's run inside is not captured as one CUDA graph "
                            "(%s): captured again with the run between graphs",
                            why,
                        )
                    else:
                        log.warning(
                            "the plan runs kernel by kernel, not as a CUDA graph (%s): each control step costs more",
                            why,
                        )
        if self.graphs and self.captured.get(key) is not None:
            return self.captured[key].replay(inputs)
        self._warm.add(key)
        outputs = fn(*inputs)
        return self.to_host(*outputs[:host_outputs]), outputs

    def rollout(self, states, actions, params, gamma):
        """states (B, n), actions (B, K, H, m), params (B, K, P) or (P,) -> cost (B, K), last state (B, K, n)."""
        cupy = self.xp
        check_rollout_shapes(self.task, states, actions, params)
        B, K, H, _ = actions.shape
        states = cupy.ascontiguousarray(cupy.asarray(states, dtype=cupy.float32))
        actions = cupy.ascontiguousarray(cupy.asarray(actions, dtype=cupy.float32))
        params = cupy.ascontiguousarray(cupy.asarray(params, dtype=cupy.float32))
        cost = cupy.empty((B, K), dtype=cupy.float32)
        last = cupy.empty((B, K, self.task.state_dim), dtype=cupy.float32)
        n = B * K
        blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        self.kernel(
            (blocks,),
            (THREADS_PER_BLOCK,),
            (
                np.int64(n),
                np.int64(K),
                np.int64(H),
                states,
                actions,
                params,
                np.int32(params.ndim > 1),
                np.float32(gamma),
                cost,
                last,
            ),
        )
        return cost, last

    def device_q(self, q):
        """The verified ONNX Q (onboard.qfunction.OnnxQ) on this GPU; any other Q callable as it is."""
        if not hasattr(q, "model_bytes"):
            return q
        return DeviceOnnxQ(q, self.stream, self)


def pack(cupy, arrays):
    """The arrays in one float64 device buffer, for one copy to the host. Copied in one by one, as
    `concatenate` does for up to eight arrays: for more it copies their addresses from the host, which
    a capture refuses, so this holds for any number of host outputs."""
    flat = cupy.empty(sum(a.size for a in arrays), dtype=cupy.float64)
    at = 0
    for a in arrays:
        flat[at : at + a.size] = a.ravel()
        at += a.size
    return flat


def unpack(flat: np.ndarray, arrays) -> tuple:
    """pack's host copy split again into arrays of the original shapes and dtypes."""
    out, at = [], 0
    for a in arrays:
        out.append(flat[at : at + a.size].reshape(a.shape).astype(a.dtype))
        at += a.size
    return tuple(out)


def capture_malloc(cupy):
    """cudaMalloc for a capture's memory pool, failing with MemoryError. On CUDA's out-of-memory error
    CuPy's pool frees its cached blocks and retries, and during a capture those blocks are still in the
    graph: a replay would then write into memory handed to someone else. This way the capture fails."""

    def malloc(size: int):
        try:
            return cupy.cuda.MemoryPointer(cupy.cuda.Memory(size), 0)
        except cupy.cuda.runtime.CUDARuntimeError as e:
            if e.status != cupy.cuda.runtime.errorMemoryAllocation:
                raise
            raise MemoryError(f"the CUDA graph's buffers do not fit in the GPU's memory ({e})") from None

    return malloc


class CapturedCall:
    """fn captured as CUDA graphs for one shape of inputs, replayed with new inputs copied in.

    Its buffers come from a memory pool of its own, so nothing else is ever handed the memory a replay
    writes. With `inline`, ONNX Runtime's run is captured into the graph like any kernel. Without, it
    interrupts the capture: it is recorded as a step run between two graphs on the same stream, with
    the same buffers every time. The graphs also write device state that fn's objects own (the
    generators' states, ONNX Runtime's session and its memory): `uses` keeps them alive."""

    def __init__(self, backend: CupyBackend, fn, inputs, host_outputs: int, uses=(), inline: bool = True):
        cupy = backend.xp
        self.cupy, self.stream, self.steps, self.inline = cupy, backend.stream, [], inline
        self.host_outputs, self.uses = host_outputs, tuple(uses)
        self.pool = cupy.cuda.MemoryPool(capture_malloc(cupy))
        with cupy.cuda.using_allocator(self.pool.malloc):
            self.inputs = [cupy.empty(x.shape, x.dtype) for x in inputs]
            backend.capture = self
            self.stream.begin_capture()
            try:
                self.outputs = fn(*self.inputs)
                self.packed = pack(cupy, self.outputs[:host_outputs])
            except BaseException:
                with contextlib.suppress(Exception):  # the capture is void; the first error says why
                    self.stream.end_capture()
                raise
            finally:
                backend.capture = None
            self._close_graph()

    def _close_graph(self) -> None:
        graph = self.stream.end_capture()  # raises where the capture was invalidated
        self.steps.append(functools.partial(graph.launch, self.stream))

    def interrupt(self, make_step) -> None:
        """Close the graph so far, then make_step() -> step outside the capture (it may call CUDA freely);
        at replay, step() runs (on the stream) before the next graph."""
        self._close_graph()
        self.steps.append(make_step())
        self.stream.begin_capture()

    def replay(self, inputs):
        for buffer, x in zip(self.inputs, inputs, strict=True):
            buffer[...] = x
        for step in self.steps:
            step()
        host = unpack(self.packed.get(), self.outputs[: self.host_outputs])
        return host, self.outputs
