/* The GPU rollout: one thread per (start state, sample), each running mpq_rollout_one from rollout.c,
 * the code the CPU build runs and the tests check against NumPy. Compiled by NVRTC through CuPy with
 * REAL = float and MPQ_FN = __device__ (onboard/backends/source.py). */

extern "C" __global__ void mpq_rollout_kernel(long n_rollouts, long K, long H, const REAL *states,
                                              const REAL *actions, const REAL *params, int params_per_rollout,
                                              REAL gamma, REAL *cost_out, REAL *last_state_out) {
    long r = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n_rollouts)
        mpq_rollout_one(r, K, H, states, actions, params, params_per_rollout, gamma, cost_out, last_state_out);
}
