"""The GPU backend: CuPy arrays, cuRAND noise, the task's rollout as one CUDA kernel, the Q on the device.

Everything MPPI does between receiving a state and sending an action stays on the GPU: noise from
cuRAND (CuPy's generator), clipping, the fused rollout-and-cost kernel (one thread per sample, compiled
by NVRTC from the same C the CPU backend and the tests use: onboard/backends/source.py), the ONNX Q
through ONNX Runtime's TensorRT or CUDA provider with its inputs and output bound to CuPy buffers, the
max-subtracted weights and the mean update (CuPy reductions), and the warm start. All of it runs on one
CUDA stream (MPPI.plan enters `scope()`), ONNX Runtime's work included, so nothing waits for the device
until MPPI copies the plan to the host in one packed transfer at the end. Float32 throughout, as ONNX
models and GPUs run.

Install with `make setup GPU=1` (the gpu extra: cupy-cuda12x, onnxruntime-gpu).
"""

from __future__ import annotations

import logging

import numpy as np

from onboard.backends import check_rollout_shapes
from onboard.backends.source import KERNEL_NAME, task_program
from onboard.tasks.base import Task

log = logging.getLogger("mpq.backends.cupy")
THREADS_PER_BLOCK = 128


def _cupy():
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "backend 'cupy' needs CuPy for CUDA 12: make setup GPU=1 (the gpu extra), or use backend 'c'"
        ) from None
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no device: CuPy raises its own CUDA errors
        raise RuntimeError(f"backend 'cupy' finds no usable CUDA device ({e}): use backend 'c' here") from None
    if devices == 0:
        raise RuntimeError("backend 'cupy' finds no CUDA device: use backend 'c' here")
    return cupy


class DeviceRNG:
    """cuRAND through CuPy, with the two draws MPPI makes (NumPy Generator's names)."""

    def __init__(self, cupy, seed: np.random.SeedSequence):
        self._state = cupy.random.RandomState(int(seed.generate_state(1, dtype=np.uint64)[0]))

    def standard_normal(self, shape, dtype=np.float32):
        return self._state.standard_normal(shape, dtype=dtype)

    def random(self, shape, dtype=np.float32):
        return self._state.random_sample(shape, dtype=dtype)


class CupyBackend:
    name = "cupy"
    dtype = np.float32

    def __init__(self, task: Task):
        cupy = self.xp = _cupy()
        self.task = task
        # MPPI's CuPy work and ONNX Runtime's on one stream: ordered without host waits. A blocking stream
        # also orders against the default stream, where a caller's own CuPy work (the warm-start shift) runs.
        self.stream = cupy.cuda.Stream()
        self.module = cupy.RawModule(code=task_program(task, "float", device=True))  # NVRTC's default C++ dialect
        self.kernel = self.module.get_function(KERNEL_NAME)

    def scope(self):
        return self.stream

    def rng(self, seed: np.random.SeedSequence) -> DeviceRNG:
        return DeviceRNG(self.xp, seed)

    def to_host(self, *arrays):
        """One device-to-host copy for all of them (the step's only synchronisation), split again."""
        cupy = self.xp
        flat = cupy.concatenate([cupy.asarray(a, dtype=cupy.float64).ravel() for a in arrays]).get()
        out, at = [], 0
        for a in arrays:
            out.append(flat[at : at + a.size].reshape(a.shape).astype(a.dtype))
            at += a.size
        return tuple(out)

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
            (blocks,), (THREADS_PER_BLOCK,),
            (np.int64(n), np.int64(K), np.int64(H), states, actions, params, np.int32(params.ndim > 1),
             np.float32(gamma), cost, last),
        )  # fmt: skip
        return cost, last

    def device_q(self, q):
        """The verified ONNX Q (onboard.qfunction.OnnxQ) on this GPU; any other Q callable as it is."""
        if not hasattr(q, "model_bytes"):
            return q
        return DeviceOnnxQ(q, self.stream)


class DeviceOnnxQ:
    """The same verified model bytes in ONNX Runtime on the GPU, inputs and output bound to CuPy buffers.

    TensorRT when ONNX Runtime has it, else CUDA. Without either (onnxruntime-gpu missing) the Q runs
    on the CPU with a copy each way per step: announced once as a warning, never silent.
    """

    def __init__(self, q, stream):
        import cupy
        import onnxruntime as ort

        from firmware_bridge.paths import cache_dir

        self.cupy, self.host_q, self.path, self.sha256 = cupy, q, q.path, q.sha256
        self.obs_name, self.act_name, self.out_name = q.obs_name, q.act_name, q.out_name
        if stream.ptr == 0:
            raise ValueError("DeviceOnnxQ needs a CUDA stream of its own (ONNX Runtime ignores the null stream)")
        self.device_id = cupy.cuda.Device().id
        stream_options = {"device_id": str(self.device_id), "user_compute_stream": str(stream.ptr)}
        cuda_options = {**stream_options, "use_tf32": "0"}  # float32 matmuls, as the CPU computes them
        trt_cache = cache_dir() / "tensorrt"
        trt_options = {**stream_options, "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache)}
        available = ort.get_available_providers()
        attempts = []  # the best first; an ORT build that refuses an option falls through to the next
        if "TensorrtExecutionProvider" in available:
            attempts.append([("TensorrtExecutionProvider", trt_options), ("CUDAExecutionProvider", cuda_options)])
        if "CUDAExecutionProvider" in available:
            attempts.append([("CUDAExecutionProvider", cuda_options)])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session, self.provider, why = None, "CPUExecutionProvider", f"providers here: {', '.join(available)}"
        for providers in attempts:
            if providers[0][0] == "TensorrtExecutionProvider":
                trt_cache.mkdir(parents=True, exist_ok=True)
            try:  # enable_fallback=0: ORT would otherwise retry silently without our options (and stream)
                session = ort.InferenceSession(
                    q.model_bytes, options, providers=[*providers, "CPUExecutionProvider"], enable_fallback=0
                )
            except Exception as e:  # ORT's own error types: a provider that would not start
                why = f"{providers[0][0]} did not start: {str(e).splitlines()[0]}"
                log.warning("%s: %s; trying the next provider", q.path, why)
                continue
            provider = session.get_providers()[0]
            stream_used = session.get_provider_options().get(provider, {}).get("user_compute_stream")
            if provider != "CPUExecutionProvider" and stream_used == str(stream.ptr):
                self.session, self.provider = session, provider
                break
            why = f"{provider} did not take the shared CUDA stream"
            log.warning("%s: %s; trying the next provider", q.path, why)
        if self.session is None:
            log.warning(
                "%s: the Q runs on the CPU with a copy each way per step (%s); install onnxruntime-gpu "
                "(make setup GPU=1)", q.path, why,
            )  # fmt: skip
            return
        self.run_options = ort.RunOptions()
        # ORT would otherwise wait for the device after each run: the stream keeps the order instead.
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        (output,) = [o for o in self.session.get_outputs() if o.name == self.out_name]
        self.out_rank = len(output.shape)

    def __call__(self, obs, act):
        cupy = self.cupy
        if self.session is None:  # the announced CPU fallback
            return cupy.asarray(self.host_q(cupy.asnumpy(obs), cupy.asnumpy(act)), dtype=cupy.float32)
        obs = cupy.ascontiguousarray(cupy.asarray(obs, dtype=cupy.float32))
        act = cupy.ascontiguousarray(cupy.asarray(act, dtype=cupy.float32))
        n = obs.shape[0]
        out = cupy.empty((n, 1) if self.out_rank == 2 else (n,), dtype=cupy.float32)
        binding = self.session.io_binding()
        for name, array in ((self.obs_name, obs), (self.act_name, act)):
            binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(array.shape), array.data.ptr)
        binding.bind_output(self.out_name, "cuda", self.device_id, np.float32, tuple(out.shape), out.data.ptr)
        self.session.run_with_iobinding(binding, self.run_options)
        return out.reshape(n)
