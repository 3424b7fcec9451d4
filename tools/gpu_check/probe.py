"""Diagnostics for the GPU backend on a lent GPU, against its target: a K=4096, H=32 plan under 0.5 ms.

Prints, for the pendulum planner of `make bench-gpu` (K=4096, H=32, one iteration, 2x256 ONNX Q):
1. whether the plan was captured as CUDA graphs, and if not the whole traceback of a direct capture
   (the backend's warning keeps only the first line);
2. where a replayed control step's time goes: each part waited for, and how long its call alone
   takes on the host (the launch cost);
3. the GPU time of a noise draw for three sizes of CuPy's XORWOW state;
4. the Q step three ways: ONNX Runtime's run as the replay does it, ONNX Runtime's own CUDA graph
   (`enable_cuda_graph`), and the run captured inside a CuPy graph, each checked against the first.
Every section reports its own failure and the script goes on; it exits 0. Run by call_b.sh.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

from offboard.bench_step import time_calls

REPEATS = 200


def ms(fn, stream=None) -> float:
    """Median milliseconds of fn(), followed by a wait for the stream when one is given."""

    def call():
        fn()
        if stream is not None:
            stream.synchronize()

    return time_calls(call, REPEATS)["median_ms"]


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def report_failure(what: str) -> None:
    print(f"{what} FAILED:")
    traceback.print_exc(file=sys.stdout)


def capture(mppi, state):
    """The backend's captured plan after two control steps, or None with the traceback printed."""
    import cupy

    from onboard.backends.cupy_backend import CapturedCall

    section("capture")
    mppi.act(state)  # kernel by kernel: compiles the kernels, sets ONNX Runtime up
    mppi.act(state)  # captured, then replayed
    (call,) = mppi.backend.captured.values()
    if call is not None:
        how = "one graph, the Q's run inside it" if len(call.steps) == 1 else "graphs, the Q's runs between them"
        print(f"captured: {len(call.steps)} steps per replay ({how})")
        return call
    print("not captured; a direct capture says why:")
    with mppi.backend.scope():
        try:
            states = cupy.asarray(state[None], dtype=cupy.float32)
            CapturedCall(mppi.backend, mppi._iterate, (states, mppi.mean[None]), 5)
        except Exception:
            traceback.print_exc(file=sys.stdout)
    return None


def replay_parts(mppi, call, state) -> None:
    section("a replayed control step, part by part: median ms waited for / the call alone on the host")
    stream = mppi.backend.stream
    state32 = np.asarray(state[None], dtype=np.float32)
    parts = {"state to the device": lambda: call.inputs[0].set(state32)}
    for i, step in enumerate(call.steps):
        kind = "graph" if getattr(getattr(step, "func", None), "__name__", "") == "launch" else "the Q's run"
        parts[f"step {i}: {kind}"] = step
    parts["packed copy to the host"] = call.packed.get
    with stream:
        for name, fn in parts.items():
            print(f"{name:32s} {ms(fn, stream):7.3f} / {ms(fn):7.3f}")
    print(f"{'whole control step (act)':32s} {ms(lambda: mppi.act(state)):7.3f}")


def noise_draws(mppi, K: int) -> None:
    """CuPy's XORWOW launches one thread per generator state (8 x 256 per SM by default), each loading and
    storing its state, whatever the draw's size: GPU time per draw, for the default and smaller states."""
    import cupy

    section(f"a noise draw of K={K} x H={mppi.config.H}: GPU ms per draw, 20 draws in one graph")
    shape = (1, K, mppi.config.H, mppi.task.act_dim)
    stream = mppi.backend.stream
    with stream:
        for size in (-1, 4 * K, K):
            generator = cupy.random.Generator(cupy.random.XORWOW(0, size=size))
            stream.begin_capture()
            try:
                for _ in range(20):
                    generator.standard_normal(shape, dtype=cupy.float32)
            finally:
                graph = stream.end_capture()
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            graph.launch(stream)
            start.record(stream)
            for _ in range(10):
                graph.launch(stream)
            end.record(stream)
            end.synchronize()
            per_draw = cupy.cuda.get_elapsed_time(start, end) / 200
            label = "default (8 x 256 x SMs)" if size < 0 else str(size)
            print(f"XORWOW states {label:24s} {per_draw:7.4f}")


def q_levers(mppi, K: int) -> None:
    import cupy
    import onnxruntime as ort

    section(f"the Q step on K={K}: median ms waited for / the call alone on the host")
    q, stream = mppi.q, mppi.backend.stream
    if getattr(q, "session", None) is None:
        print(f"skipped: the Q runs on {getattr(q, 'provider', 'the host')}, not on the GPU")
        return
    task = mppi.task
    rng = np.random.default_rng(0)
    with stream:
        obs = cupy.asarray(rng.standard_normal((K, task.obs_dim)), dtype=cupy.float32)
        act = cupy.asarray(rng.standard_normal((K, task.act_dim)), dtype=cupy.float32)

        def bound(session):
            out = q.output(K)
            return out, q.bound_run(obs, act, out, session)

        reference, run = bound(q.session)
        run()
        stream.synchronize()
        print(f"{'ONNX Runtime run (as replayed)':40s} {ms(run, stream):7.3f} / {ms(run):7.3f}   ({q.provider})")

        try:
            cuda_options = {
                "device_id": str(q.device_id),
                "user_compute_stream": str(stream.ptr),
                "use_tf32": "0",
                "enable_cuda_graph": "1",
            }
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(
                q.host_q.model_bytes,
                options,
                enable_fallback=0,
                providers=[("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"],
            )
            print(f"(session providers: {session.get_providers()})")
            out, run_graph = bound(session)
            run_graph()  # ONNX Runtime captures on its first runs
            run_graph()
            stream.synchronize()
            gap = float(cupy.abs(out - reference).max())
            print(
                f"{'ONNX Runtime with enable_cuda_graph':40s} {ms(run_graph, stream):7.3f} / "
                f"{ms(run_graph):7.3f}   max |diff| {gap:.2e}"
            )
        except Exception:
            report_failure("ONNX Runtime with enable_cuda_graph")

        out, run_again = bound(q.session)
        out.fill(cupy.nan)  # what the graph's launch must overwrite
        try:
            stream.begin_capture()
            try:
                run_again()
            finally:
                graph = stream.end_capture()
            graph.launch(stream)
            stream.synchronize()
            gap = float(cupy.abs(out - reference).max())
            launch = functools.partial(graph.launch, stream)
            print(
                f"{'ONNX Runtime run inside a CuPy graph':40s} {ms(launch, stream):7.3f} / "
                f"{ms(launch):7.3f}   max |diff| {gap:.2e}"
            )
        except Exception:
            report_failure("ONNX Runtime run inside a CuPy graph")


def main() -> int:
    from offboard.bench_gpu import HIDDEN, TARGET_K, H
    from offboard.onnx_mlp import save_random_q
    from onboard.mppi import MPPI, MPPIConfig
    from onboard.qfunction import OnnxQ
    from onboard.tasks import get_task

    task = get_task("pendulum")
    path = Path(tempfile.mkdtemp()) / "q.onnx"
    save_random_q(task, HIDDEN, path, np.random.default_rng(0), "tools/gpu_check/probe.py")
    config = MPPIConfig.for_task(task, K=TARGET_K, H=H, n_iters=1, model="biased")
    mppi = MPPI(task, config, "cupy", q=OnnxQ(path, task))
    print(f"pendulum K={TARGET_K} H={H}, Q 2x256 on {mppi.q.provider}")
    state = task.hanging_state()
    try:
        call = capture(mppi, state)
        if call is not None:
            replay_parts(mppi, call, state)
    except Exception:
        report_failure("capture and replay")
    try:
        noise_draws(mppi, TARGET_K)
    except Exception:
        report_failure("the noise draws")
    try:
        q_levers(mppi, TARGET_K)
    except Exception:
        report_failure("the Q levers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
