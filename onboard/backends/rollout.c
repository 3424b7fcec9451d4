/* The generic rollout, compiled once per task with the task's per-sample C functions in front of it
 * (onboard/backends/source.py writes REAL, TASK_STEP, TASK_COST and the dimensions as macros).
 * Same arithmetic as onboard/backends/numpy_backend.py. `mpq_rollout_one` is the whole of one rollout:
 * the CPU loops over it below, the GPU runs it as one thread per rollout (rollout_kernel.cu), so the
 * CPU build that the tests hold against NumPy is the code the GPU runs. */

MPQ_FN void mpq_rollout_one(long r, long K, long H, const REAL *states, const REAL *actions, const REAL *params,
                            int params_per_rollout, REAL gamma, REAL *cost_out, REAL *last_state_out) {
    const REAL *a = actions + r * H * ACT_DIM;
    const REAL *p = params_per_rollout ? params + r * PARAM_DIM : params;
    const REAL *s0 = states + (r / K) * STATE_DIM;
    REAL s[STATE_DIM], next[STATE_DIM];
    for (int i = 0; i < STATE_DIM; ++i) s[i] = s0[i];
    REAL cost = 0, discount = 1;
    for (long t = 0; t < H - 1; ++t) {
        cost += discount * TASK_COST(s, a + t * ACT_DIM);
        TASK_STEP(s, a + t * ACT_DIM, p, next);
        for (int i = 0; i < STATE_DIM; ++i) s[i] = next[i];
        discount *= gamma;
    }
    cost_out[r] = cost;
    for (int i = 0; i < STATE_DIM; ++i) last_state_out[r * STATE_DIM + i] = s[i];
}

#ifndef MPQ_DEVICE
void mpq_rollout(long n_rollouts, long K, long H, const REAL *states, const REAL *actions, const REAL *params,
                 int params_per_rollout, REAL gamma, REAL *cost_out, REAL *last_state_out) {
    for (long r = 0; r < n_rollouts; ++r)
        mpq_rollout_one(r, K, H, states, actions, params, params_per_rollout, gamma, cost_out, last_state_out);
}
#endif
