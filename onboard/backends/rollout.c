/* The generic rollout, compiled once per task with the task's per-sample C functions in front of it
 * (onboard/backends/source.py writes REAL, TASK_STEP, TASK_COST and the dimensions as macros).
 * Same arithmetic as onboard/backends/numpy_backend.py. `mpq_rollout_one` is the whole of one rollout: the
 * GPU runs it as one thread per rollout (rollout_kernel.cu), the CPU runs the same steps four rollouts at a
 * time below, so the CPU build that the tests hold against NumPy computes what the GPU computes. */

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
/* The CPU's loop: MPQ_BLOCK rollouts advanced together, one time step at a time. A rollout alone waits on
 * each step's sin and divide before the next can start; four independent chains keep the core busy (1.6-1.9x
 * on the pendulum, make bench's rollout row). Per rollout, the same arithmetic in the same order as
 * mpq_rollout_one, so the results are bit for bit the same; the remainder runs one by one. */
#define MPQ_BLOCK 4
void mpq_rollout(long n_rollouts, long K, long H, const REAL *states, const REAL *actions, const REAL *params,
                 int params_per_rollout, REAL gamma, REAL *cost_out, REAL *last_state_out) {
    long r0 = 0;
    for (; r0 + MPQ_BLOCK <= n_rollouts; r0 += MPQ_BLOCK) {
        REAL s[MPQ_BLOCK][STATE_DIM], next[MPQ_BLOCK][STATE_DIM], cost[MPQ_BLOCK];
        const REAL *p[MPQ_BLOCK];
        for (int j = 0; j < MPQ_BLOCK; ++j) {
            const REAL *s0 = states + ((r0 + j) / K) * STATE_DIM;
            for (int i = 0; i < STATE_DIM; ++i) s[j][i] = s0[i];
            p[j] = params_per_rollout ? params + (r0 + j) * PARAM_DIM : params;
            cost[j] = 0;
        }
        REAL discount = 1;
        for (long t = 0; t < H - 1; ++t) {
            for (int j = 0; j < MPQ_BLOCK; ++j) {
                const REAL *a = actions + ((r0 + j) * H + t) * ACT_DIM;
                cost[j] += discount * TASK_COST(s[j], a);
                TASK_STEP(s[j], a, p[j], next[j]);
                for (int i = 0; i < STATE_DIM; ++i) s[j][i] = next[j][i];
            }
            discount *= gamma;
        }
        for (int j = 0; j < MPQ_BLOCK; ++j) {
            cost_out[r0 + j] = cost[j];
            for (int i = 0; i < STATE_DIM; ++i) last_state_out[(r0 + j) * STATE_DIM + i] = s[j][i];
        }
    }
    for (long r = r0; r < n_rollouts; ++r)
        mpq_rollout_one(r, K, H, states, actions, params, params_per_rollout, gamma, cost_out, last_state_out);
}
#endif
