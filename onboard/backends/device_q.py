"""The ONNX Q on the GPU: the verified model bytes in ONNX Runtime, on MPPI's CUDA stream, its inputs and output
bound to CuPy buffers, so the cupy and warp backends' plans call it without a copy (and capture it in their
CUDA graphs where ONNX Runtime's provider allows).

Which provider runs it is negotiated here: TensorRT when ONNX Runtime has it, else CUDA; each must take the
shared stream. Without either (onnxruntime-gpu missing) the Q runs on the CPU with a copy each way per step:
announced once as a warning, never silent.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging

import numpy as np

from firmware_bridge.paths import cache_dir

log = logging.getLogger("mpq.backends.cupy")


class DeviceOnnxQ:
    """The same verified model bytes in ONNX Runtime on the GPU, inputs and output bound to CuPy buffers.

    TensorRT when ONNX Runtime has it, else CUDA. Without either (onnxruntime-gpu missing) the Q runs
    on the CPU with a copy each way per step: announced once as a warning, never silent.
    """

    def __init__(self, q, stream, backend=None):
        """backend: the CupyBackend whose capture under way, if any, ONNX Runtime's run joins or interrupts."""
        import cupy
        import onnxruntime as ort

        self.cupy, self.host_q, self.path, self.sha256 = cupy, q, q.path, q.sha256
        self.backend = backend  # its capture under way, if any, is interrupted for ONNX Runtime's run
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
        if attempts and hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
            # onnxruntime-gpu[cuda,cudnn] brings CUDA and cuDNN as pip packages, off the loader's path: load
            # them now. ORT prints what it could not load; that is kept for the warning if CUDA then fails.
            with contextlib.redirect_stdout(io.StringIO()) as said:
                ort.preload_dlls()
            missing = [line for line in said.getvalue().splitlines() if line.startswith("Failed to load")]
            if missing:
                why = f"{missing[0]} ({len(missing)} CUDA libraries missing)"
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
                "(make setup GPU=1)",
                q.path,
                why,
            )
            return
        self.run_options = ort.RunOptions()
        # ORT would otherwise wait for the device after each run: the stream keeps the order instead.
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        (output,) = [o for o in self.session.get_outputs() if o.name == self.out_name]
        self.out_rank = len(output.shape)

    def output(self, n: int):
        """A CuPy buffer for the Q of n samples, shaped as the model's output."""
        return self.cupy.empty((n, 1) if self.out_rank == 2 else (n,), dtype=self.cupy.float32)

    def bound_run(self, obs, act, out, session=None):
        """The Q of obs and act into out (CuPy buffers) as one call: session.run (by default this Q's) on
        an IO binding to them, made now. Binding records the buffers' addresses on the host, so it may be
        made during a capture (the `inline` one); an interrupted capture makes it outside."""
        session = session or self.session
        binding = session.io_binding()
        for name, array in ((self.obs_name, obs), (self.act_name, act)):
            binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(array.shape), array.data.ptr)
        binding.bind_output(self.out_name, "cuda", self.device_id, np.float32, tuple(out.shape), out.data.ptr)
        return functools.partial(session.run_with_iobinding, binding, self.run_options)

    def __call__(self, obs, act):
        """q (N,) for obs (N, d) and act (N, m), CuPy arrays. Inside an `inline` CUDA graph capture ONNX
        Runtime's GPU run is captured with the rest; in any other capture, and for the CPU fallback (its
        copies cannot be captured), the run is recorded as a step between two graphs, on these buffers."""
        cupy = self.cupy
        obs = cupy.ascontiguousarray(cupy.asarray(obs, dtype=cupy.float32))
        act = cupy.ascontiguousarray(cupy.asarray(act, dtype=cupy.float32))
        n = obs.shape[0]
        if self.session is None:  # the announced CPU fallback
            out = cupy.empty((n,), dtype=cupy.float32)

            def make_run():
                return lambda: out.set(np.asarray(self.host_q(obs.get(), act.get()), dtype=np.float32).reshape(n))

        else:
            out = self.output(n)
            make_run = functools.partial(self.bound_run, obs, act, out)

        capture = self.backend.capture if self.backend is not None else None
        if capture is None or (capture.inline and self.session is not None):
            make_run()()
        else:
            capture.interrupt(make_run)
        return out.reshape(n)
