"""One source for each task's planner dynamics, assembled for the C compiler (CPU) or NVRTC (GPU).

A task's `c_source` (per-sample `<task>_step` and `<task>_cost`) and the generic `rollout.c` become
one translation unit: with REAL = double for the CPU backend, REAL = float for the GPU, and on the GPU
MPQ_FN = __device__ plus the kernel in `rollout_kernel.cu`. The float CPU build exists for the tests:
it checks on any machine the float arithmetic the GPU runs.
"""

from __future__ import annotations

from pathlib import Path

from onboard.tasks.base import C_PRELUDE, Task

HERE = Path(__file__).parent
ROLLOUT_SOURCE = HERE / "rollout.c"
KERNEL_SOURCE = HERE / "rollout_kernel.cu"
KERNEL_NAME = "mpq_rollout_kernel"


def task_program(task: Task, real: str = "double", device: bool = False) -> str:
    """The whole translation unit for one task: prelude, the task's functions, the rollout (and kernel)."""
    if real not in ("double", "float"):
        raise ValueError(f"REAL must be double or float, not {real!r}")
    head = [f"#define REAL {real}"]
    if device:
        head += ["#define MPQ_DEVICE 1", "#define MPQ_FN static __device__ __forceinline__"]
    parts = [
        *head,
        C_PRELUDE,
        task.c_source,
        f"#define STATE_DIM {task.state_dim}",
        f"#define ACT_DIM {task.act_dim}",
        f"#define PARAM_DIM {task.param_dim}",
        f"#define TASK_STEP {task.name}_step",
        f"#define TASK_COST {task.name}_cost",
        ROLLOUT_SOURCE.read_text(),
    ]
    if device:
        parts.append(KERNEL_SOURCE.read_text())
    return "\n".join(parts)
