/* Hand-written CPU kernels for optimizer steps (``fused=True`` on CPU float32 tensors).
 *
 * Two kinds:
 * - steps that need a reduction before their update (AdamP, SGDP, SCALE, AM-SGD, AM-AdamW).
 *   torch.compile emits the reduction and the update as two loops, so the data is read twice.
 *   Here each kernel reads and writes every element once where the method allows it (AdamP,
 *   SGDP, SCALE's rows), or takes two passes whose second reads what the first just left in
 *   the cache (SCALE's embedding columns, AM-SGD, AM-AdamW);
 * - purely elementwise steps (Lion, Adan, Sophia, CLASSP, Schedule-Free AdamW) in one pass.
 *
 * Built and loaded by optarena/optim/kernels/native.py with the system C compiler (-O3
 * -march=native -fopenmp -ffp-contract=off); float32, contiguous tensors only. Every exported
 * function is ``void optarena_<name>_f32(...)``, defined with its opening brace on the line of its
 * prototype: the loader parses these prototypes (types float *, double *, int64_t, double, int)
 * and Python passes the arguments by these parameter names. The per-element
 * arithmetic follows the eager code of each optimizer op by op (no fused multiply-add),
 * so the two paths agree to float32 rounding. Flat reductions accumulate in float32 over
 * sub-blocks of SUB elements, then in double over fixed blocks combined in a fixed order;
 * row reductions accumulate in float32 within one thread (as the eager test does): no result
 * depends on the thread count.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16384 /* elements per partial sum of a flat reduction */
#define SUB 512      /* elements summed in float32 before a partial sum in double: converting every
                        product to double would make AM-AdamW's first pass compute-bound */

/* torch.lerp's formula: start + w (end - start) for w < 0.5, else end - (end - start)(1 - w). */
static inline float lerp(float start, float end, float w) {
    return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

/* The scale-invariance test's cosines from the rows' sums[3 r + k] = <g, θ>, ‖g‖², ‖θ‖²:
 * cosines = [max over rows of |cos(g_r, θ_r)|, |cos(g, θ)| of the whole tensor], each
 * <g, θ> / (max(‖g‖, eps) max(‖θ‖, eps)) as in torch.nn.functional.cosine_similarity. */
static void invariance_cosines(const double *sums, int64_t rows, double eps, double *cosines) {
    double channel = 0.0, dot = 0.0, gsq = 0.0, psq = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
        const double *s = sums + 3 * r;
        const double c = fabs(s[0]) / (fmax(sqrt(s[1]), eps) * fmax(sqrt(s[2]), eps));
        channel = c > channel || c != c ? c : channel; /* a NaN row propagates, as torch's max does */
        dot += s[0];
        gsq += s[1];
        psq += s[2];
    }
    cosines[0] = channel;
    cosines[1] = fabs(dot) / (fmax(sqrt(gsq), eps) * fmax(sqrt(psq), eps));
}

/* The coefficients of AdamP's or SGDP's unprojected step. */
struct invariance_step {
    int nesterov, decayed;
    float keep, step;          /* θ <- θ keep + step u (keep applied only if decayed) */
    float w1, b2, w2, bc, e;   /* AdamP: moments and denominator */
    float mu, dm;              /* SGDP: momentum and 1 - dampening */
};

/* Row r of AdamP's (adam = 1) or SGDP's (adam = 0) pass: the unprojected step, fused with the row's sums of
 * the scale-invariance test (over θ before the update) into sums[3 r + k]. s1, s2: AdamP's m and v, or
 * SGDP's buffer and NULL. Called inside each method's parallel loop with a literal adam, so that each
 * inlined copy is specialised (called outside, OpenMP's outlined region would take adam as a variable). */
static inline __attribute__((always_inline)) void invariance_step_row(
    const struct invariance_step *k, int adam, float *p, const float *g, float *s1, float *s2, int64_t r,
    int64_t cols, double *sums) {
    const int nesterov = k->nesterov, decayed = k->decayed;
    const float keep = k->keep, step = k->step, w1 = k->w1, b2 = k->b2, w2 = k->w2, bc = k->bc, e = k->e;
    const float mu = k->mu, dm = k->dm;
    float *pr = p + r * cols, *ar = s1 + r * cols, *vr = adam ? s2 + r * cols : NULL;
    const float *gr = g + r * cols;
    float dot = 0.0f, gsq = 0.0f, psq = 0.0f;
#pragma omp simd reduction(+ : dot, gsq, psq)
    for (int64_t c = 0; c < cols; ++c) {
        const float gi = gr[c], pi = pr[c];
        dot += gi * pi;
        gsq += gi * gi;
        psq += pi * pi;
        float update;
        if (adam) {
            const float mi = lerp(ar[c], gi, w1);
            const float vi = vr[c] * b2 + w2 * (gi * gi);
            ar[c] = mi;
            vr[c] = vi;
            const float first = nesterov ? lerp(mi, gi, w1) : mi;
            update = first / (sqrtf(vi) / bc + e);
        } else {
            const float bi = ar[c] * mu + dm * gi;
            ar[c] = bi;
            update = nesterov ? gi + mu * bi : bi;
        }
        const float decayed_p = decayed ? pi * keep : pi;
        pr[c] = decayed_p + step * update;
    }
    sums[3 * r] = dot;
    sums[3 * r + 1] = gsq;
    sums[3 * r + 2] = psq;
}

/* AdamP without projection, fused with the scale-invariance test; the test's cosines go to cosines[2]. */
void optarena_adamp_f32(float *p, const float *g, float *m, float *v, int64_t rows, int64_t cols,
                        double beta1, double beta2, double bc2_sqrt, double eps, double step_size,
                        double decay, int nesterov, double test_eps, double *sums, double *cosines,
                        int threads) {
    const struct invariance_step k = {
        .nesterov = nesterov, .decayed = decay != 0.0, .keep = (float)(1.0 - decay), .step = (float)-step_size,
        .w1 = (float)(1.0 - beta1), .b2 = (float)beta2, .w2 = (float)(1.0 - beta2), .bc = (float)bc2_sqrt,
        .e = (float)eps};
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r)
        invariance_step_row(&k, 1, p, g, m, v, r, cols, sums);
    invariance_cosines(sums, rows, test_eps, cosines);
}

/* SGDP without projection, fused with the same test. */
void optarena_sgdp_f32(float *p, const float *g, float *buf, int64_t rows, int64_t cols, double mu, double damp,
                       double lr, double decay, int nesterov, double test_eps, double *sums, double *cosines,
                       int threads) {
    const struct invariance_step k = {
        .nesterov = nesterov, .decayed = decay != 0.0, .keep = (float)(1.0 - decay), .step = (float)-lr,
        .mu = (float)mu, .dm = (float)damp};
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r)
        invariance_step_row(&k, 0, p, g, buf, NULL, r, cols, sums);
    invariance_cosines(sums, rows, test_eps, cosines);
}

#define ROW_CHUNK 32 /* rows per pipelined run of SCALE's row kernel: a fixed split, whatever the thread count */

/* One sweep of SCALE's pipelined row loop: if pr, θ_r <- θ_r keep + step d_r (d_r from L1: the previous sweep
 * wrote or read it); if gn, the next row's direction d_n (= gn, or with bn the momentum bn <- lerp(bn, gn, w))
 * and its sum of squares, which is returned. Reading the next row's g while writing this row's θ keeps two
 * memory streams going, as a plain in-place add does. Called with literal NULLs, so that each inlined copy
 * is a branch-free loop. */
static inline __attribute__((always_inline)) float scale_sweep(float *restrict pr, const float *restrict dr,
                                                              float keep, float step,
                                                              const float *restrict gn, float *restrict bn,
                                                              float w, int64_t cols) {
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < cols; ++c) {
        if (gn) {
            const float dn = bn ? lerp(bn[c], gn[c], w) : gn[c];
            if (bn)
                bn[c] = dn;
            sq += dn * dn;
        }
        if (pr)
            pr[c] = pr[c] * keep + step * dr[c]; /* keep = 1 without decay: exact, and no branch to unswitch */
    }
    return sq;
}

/* Rows r0 .. r1 - 1: sum row r0, then update row r while summing row r + 1. A row's sum comes from the first
 * sweep (r = r0) or from a fused one, two loops that may vectorise the sum differently; r0 is a multiple of
 * ROW_CHUNK for any thread count, so every row is always summed by the same loop. */
static inline __attribute__((always_inline)) void scale_rows(float *p, const float *g, float *buf, int64_t r0,
                                                             int64_t r1, int64_t cols, float w, double lr,
                                                             float keep) {
    const float *d = buf ? buf : g; /* the direction: momentum, or the gradient itself */
    float sq = scale_sweep(NULL, NULL, keep, 0.0f, g + r0 * cols, buf ? buf + r0 * cols : NULL, w, cols);
    for (int64_t r = r0; r < r1; ++r) {
        const double rms = sqrt((double)sq / (double)cols);
        const float step = (float)-lr * (1.0f / (float)(rms > 1e-8 || rms != rms ? rms : 1e-8)); /* NaN stays */
        if (r + 1 < r1)
            sq = scale_sweep(p + r * cols, d + r * cols, keep, step, g + (r + 1) * cols,
                             buf ? buf + (r + 1) * cols : NULL, w, cols);
        else
            scale_sweep(p + r * cols, d + r * cols, keep, step, NULL, NULL, w, cols);
    }
}

/* SCALE on a hidden or readout matrix: θ <- θ (1 - decay) - lr d / max(rms of d's row, 1e-8), with d = g, or
 * with buf the momentum buf <- lerp(buf, g, weight) computed in the same pass. Pipelined (scale_rows): one
 * pass over memory with two streams at a time. The update multiplies by 1 / rms where the eager code
 * divides by it: an ulp apart at most. */
void optarena_row_rms_f32(float *p, const float *g, float *buf, int64_t rows, int64_t cols, double weight,
                          double lr, double decay, int threads) {
    const float w = (float)weight, keep = (float)(1.0 - decay);
    const int64_t chunks = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < chunks; ++k) {
        const int64_t r0 = k * ROW_CHUNK, r1 = r0 + ROW_CHUNK < rows ? r0 + ROW_CHUNK : rows;
        if (buf) /* two call sites, so that each inlined copy knows whether there is a momentum */
            scale_rows(p, g, buf, r0, r1, cols, w, lr, keep);
        else
            scale_rows(p, g, NULL, r0, r1, cols, w, lr, keep);
    }
}

#define COL_CHUNK 64 /* rows summed in float32 before a column's sum in double */

/* SCALE on an embedding: the same with the RMS of each column (over the vocabulary). Two passes: the
 * column sums (each thread owns a range of columns, so no partial sums are combined; float32 over
 * COL_CHUNK rows at a time, then double), then the update, which multiplies by 1 / rms (the eager code
 * divides: an ulp apart at most). colsq: cols doubles, colf: cols floats of scratch. */
void optarena_col_rms_f32(float *p, const float *g, int64_t rows, int64_t cols, double lr, double decay,
                          double *colsq, float *colf, int threads) {
    const float keep = (float)(1.0 - decay), step = (float)-lr; /* keep = 1 without decay: exact */
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t t = 0, nt = 1;
#endif
        const int64_t c0 = cols * t / nt, c1 = cols * (t + 1) / nt;
        for (int64_t c = c0; c < c1; ++c)
            colsq[c] = 0.0;
        for (int64_t r0 = 0; r0 < rows; r0 += COL_CHUNK) { /* each thread sweeps all rows over its columns */
            const int64_t r1 = r0 + COL_CHUNK < rows ? r0 + COL_CHUNK : rows;
            for (int64_t c = c0; c < c1; ++c)
                colf[c] = 0.0f;
            for (int64_t r = r0; r < r1; ++r) {
                const float *gr = g + r * cols;
#pragma omp simd
                for (int64_t c = c0; c < c1; ++c)
                    colf[c] += gr[c] * gr[c];
            }
            for (int64_t c = c0; c < c1; ++c)
                colsq[c] += colf[c];
        }
        for (int64_t c = c0; c < c1; ++c) {
            const double rms = sqrt(colsq[c] / (double)rows);
            colf[c] = 1.0f / (float)(rms > 1e-8 || rms != rms ? rms : 1e-8); /* as clamp_min: NaN stays NaN */
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float *pr = p + r * cols;
            const float *gr = g + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c)
                pr[c] = pr[c] * keep + step * (gr[c] * colf[c]);
        }
    }
}

/* Sum nblocks rows of k partial sums in block order into out[k]. */
static void combine(const double *partials, int64_t nblocks, int k, double *out) {
    for (int j = 0; j < k; ++j)
        out[j] = 0.0;
    for (int64_t b = 0; b < nblocks; ++b)
        for (int j = 0; j < k; ++j)
            out[j] += partials[b * k + j];
}

/* AM-SGD pass 1 on one flat tensor: out = [Σ h², Σ (h - d)²] with h = g + wd θ.
 * partials: ceil(n / BLOCK) * 2 doubles of scratch. */
void optarena_am_sgd_sums_f32(const float *p, const float *g, const float *d, int64_t n, double weight_decay,
                              double *partials, double *out, int threads) {
    const float wd = (float)weight_decay;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        double hsq = 0.0, diffsq = 0.0;
        for (int64_t s = lo; s < hi; s += SUB) {
            const int64_t e = s + SUB < hi ? s + SUB : hi;
            float h2 = 0.0f, d2 = 0.0f;
            if (wd != 0.0f) {
#pragma omp simd reduction(+ : h2, d2)
                for (int64_t i = s; i < e; ++i) {
                    const float h = g[i] + wd * p[i], diff = h - d[i];
                    h2 += h * h;
                    d2 += diff * diff;
                }
            } else {
#pragma omp simd reduction(+ : h2, d2)
                for (int64_t i = s; i < e; ++i) {
                    const float h = g[i], diff = h - d[i];
                    h2 += h * h;
                    d2 += diff * diff;
                }
            }
            hsq += h2;
            diffsq += d2;
        }
        partials[2 * b] = hsq;
        partials[2 * b + 1] = diffsq;
    }
    combine(partials, nblocks, 2, out);
}

/* AM-SGD pass 2: d <- d + weight (h - d);  θ <- θ - lr d. */
void optarena_am_sgd_update_f32(float *p, const float *g, float *d, int64_t n, double weight_decay,
                                double weight, double lr, int threads) {
    const float wd = (float)weight_decay, w = (float)weight, step = (float)-lr;
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float h = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        const float di = d[i] + (h - d[i]) * w;
        d[i] = di;
        p[i] = p[i] + step * di;
    }
}

/* AM-AdamW. Each element needs P, 1 / P, 1 / (1 + a) and 1 / (P (1 + a)); dividing for each
 * (as the foreach code does) makes these passes compute-bound on CPU, so both kernels take one
 * reciprocal r = 1 / (P (1 + a)) and multiply (1 / P = (1 + a) r, 1 / (1 + a) = P r): the
 * results differ from the foreach path by a few float32 ulps instead of one. */

/* Pass 1 on one flat tensor: v <- b2 v + (1 - b2) g², then (if want_sums) β's inner products
 * out = [<g, d/P + wd θ>, <M u, g + a d>, <M u, u>] with P = (sqrt(v) / bc2 + eps) c, a = λ P,
 * M = 1 / (P (1 + a)), u = d - g. partials: ceil(n / BLOCK) * 3 doubles of scratch. */
void optarena_am_adamw_sums_f32(const float *p, const float *g, const float *d, float *v, int64_t n,
                                double beta2, double bc2_sqrt, double eps, double correction, double lam,
                                double weight_decay, int want_sums, double *partials, double *out, int threads) {
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2), inv_bc = (float)(1.0 / bc2_sqrt), e = (float)eps;
    const float corr = (float)correction, la = (float)lam, wd = (float)weight_decay;
    if (!want_sums) {
#pragma omp parallel for simd schedule(static) num_threads(threads)
        for (int64_t i = 0; i < n; ++i)
            v[i] = v[i] * b2 + (g[i] * g[i]) * w2;
        return;
    }
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        double gap = 0.0, pull = 0.0, curvature = 0.0;
        for (int64_t s = lo; s < hi; s += SUB) {
            const int64_t end = s + SUB < hi ? s + SUB : hi;
            float ga = 0.0f, pu = 0.0f, cu = 0.0f;
#pragma omp simd reduction(+ : ga, pu, cu)
            for (int64_t i = s; i < end; ++i) {
                const float gi = g[i], di = d[i];
                const float vi = v[i] * b2 + (gi * gi) * w2;
                v[i] = vi;
                const float precond = (sqrtf(vi) * inv_bc + e) * corr;
                const float damp = precond * la + 1.0f;
                const float r = 1.0f / (precond * damp);
                const float weighted = (di - gi) * r;
                ga += gi * (di * (damp * r) + p[i] * wd);
                pu += weighted * (gi + (damp - 1.0f) * di);
                cu += weighted * (di - gi);
            }
            gap += ga;
            pull += pu;
            curvature += cu;
        }
        partials[3 * b] = gap;
        partials[3 * b + 1] = pull;
        partials[3 * b + 2] = curvature;
    }
    combine(partials, nblocks, 3, out);
}

/* Pass 2: d <- d - keep u / (1 + a);  θ <- θ (1 - lr wd) - lr d / P, with keep = 1 - β. */
void optarena_am_adamw_update_f32(float *p, const float *g, float *d, const float *v, int64_t n, double keep,
                                  double bc2_sqrt, double eps, double correction, double lam, double lr,
                                  double weight_decay, int threads) {
    const float k = (float)keep, inv_bc = (float)(1.0 / bc2_sqrt), e = (float)eps, corr = (float)correction;
    const float la = (float)lam, step = (float)-lr, shrink = (float)(1.0 - lr * weight_decay);
    const int decayed = weight_decay != 0.0;
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float precond = (sqrtf(v[i]) * inv_bc + e) * corr;
        const float damp = precond * la + 1.0f;
        const float r = 1.0f / (precond * damp);
        const float di = d[i] - (d[i] - g[i]) * k * (precond * r);
        d[i] = di;
        const float decayed_p = decayed ? p[i] * shrink : p[i];
        p[i] = decayed_p + step * (di * (damp * r));
    }
}

/* Purely elementwise steps: one pass, each element read and written once. Each follows the
 * compiled function of the same name in optarena/optim/kernels/elementwise.py op by op. */

static inline float sign_of(float x) { return (float)((x > 0.0f) - (x < 0.0f)); } /* torch.sign, NaN -> 0 */

/* Lion: θ <- θ (1 - lr wd) - lr sign(b1 m + (1 - b1) g);  m <- b2 m + (1 - b2) g.
 * (g - g) is 0, or NaN for a NaN or inf gradient, which thus reaches θ (sign_of(NaN) is 0). */
void optarena_lion_f32(float *p, const float *g, float *m, int64_t n, double lr, double beta1, double beta2,
                       double weight_decay, int threads) {
    const float b1 = (float)beta1, w1 = (float)(1.0 - beta1), b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    const float keep = (float)(1.0 - lr * weight_decay), step = (float)lr;
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i], mi = m[i];
        p[i] = p[i] * keep - (sign_of(mi * b1 + gi * w1) + (gi - gi)) * step;
        m[i] = mi * b2 + gi * w2;
    }
}

/* Adan (optarena.optim.adan's betas): with u = g - g_prev and z = g + b2 u,
 * m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) u;  n <- b3 n + (1 - b3) z²;
 * θ <- (θ (1 - decay if no_prox) - (size_m m + size_v v) / (sqrt(n) + eps_scaled)) / (1 + decay unless no_prox);
 * g_prev <- g. */
void optarena_adan_f32(float *p, const float *g, float *m, float *v, float *nsq, float *prev, int64_t n,
                       double b1, double b2, double b3, double size_m, double size_v, double eps_scaled,
                       double decay, int no_prox, int threads) {
    const float beta1 = (float)b1, w1 = (float)(1.0 - b1), beta2 = (float)b2, w2 = (float)(1.0 - b2);
    const float beta3 = (float)b3, w3 = (float)(1.0 - b3), sm = (float)size_m, sv = (float)size_v;
    const float e = (float)eps_scaled, keep = (float)(1.0 - decay), shrink = (float)(1.0 + decay);
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i], diff = gi - prev[i], z = gi + diff * beta2;
        const float mi = m[i] * beta1 + gi * w1, vi = v[i] * beta2 + diff * w2, ni = nsq[i] * beta3 + (z * z) * w3;
        m[i] = mi;
        v[i] = vi;
        nsq[i] = ni;
        const float stepped = (no_prox ? p[i] * keep : p[i]) - (mi * sm + vi * sv) / (sqrtf(ni) + e);
        p[i] = no_prox ? stepped : stepped / shrink;
        prev[i] = gi;
    }
}

/* Sophia: θ <- θ (1 - lr wd);  m <- b1 m + (1 - b1) g;
 * θ <- θ - (lr / rho) clamp(m / max(h, eps / rho), -rho, rho), NaN passing through as in torch.clamp. */
void optarena_sophia_f32(float *p, const float *g, float *m, const float *h, int64_t n, double lr, double beta1,
                         double rho, double weight_decay, double eps, int threads) {
    const float b1 = (float)beta1, w1 = (float)(1.0 - beta1), keep = (float)(1.0 - lr * weight_decay);
    const float floor = (float)(eps / rho), r = (float)rho, step = (float)(lr / rho);
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i], mi = m[i] * b1 + gi * w1;
        m[i] = mi;
        const float hi = h[i] < floor ? floor : h[i];
        const float q = mi / hi;
        const float ratio = (q < -r ? -r : (q > r ? r : q)) + (gi - gi); /* an inf gradient reaches θ */
        p[i] = p[i] * keep - ratio * step;
    }
}

/* CLASSP: s = |g|^power (power_kind 1: |g|, 2: g², 0: any power via powf), t = acc + s if include_current
 * else acc; u = g / (t + eps)^(1/power) if apply_scaling else g, zeroed where thresholded and g² <= threshold;
 * θ <- θ - lr u;  acc <- acc + s. */
static inline float classp_element(float *p, const float *g, float *acc, int64_t i, int power_kind, float pw,
                                   float inv_pw, float e, float th, float step, int apply_scaling,
                                   int include_current, int thresholded) {
    const float gi = g[i];
    const float s = power_kind == 1 ? fabsf(gi) : power_kind == 2 ? gi * gi : powf(fabsf(gi), pw);
    const float total = include_current ? acc[i] + s : acc[i];
    const float shifted = total + e;
    /* every element divides (g / 1 is exact, so unscaled is g) and the threshold selects, so that
     * the loop has no branch and vectorises */
    const float root = !apply_scaling ? 1.0f : power_kind == 1 ? shifted : power_kind == 2 ? sqrtf(shifted)
                                                                                         : powf(shifted, inv_pw);
    const float scaled = gi / root;
    const float u = (!thresholded || gi * gi > th) ? scaled : 0.0f;
    p[i] = p[i] - u * step;
    return acc[i] + s;
}

void optarena_classp_f32(float *p, const float *g, float *acc, int64_t n, double lr, double threshold, double eps,
                         double power, int power_kind, int apply_scaling, int include_current, int thresholded,
                         int threads) {
    const float step = (float)lr, th = (float)threshold, e = (float)eps, pw = (float)power;
    const float inv_pw = (float)(1.0 / power);
    if (power_kind == 0) { /* powf does not vectorize */
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t i = 0; i < n; ++i)
            acc[i] = classp_element(p, g, acc, i, 0, pw, inv_pw, e, th, step, apply_scaling, include_current,
                                    thresholded);
        return;
    }
    /* a literal power_kind per loop, so that powf is gone from the vectorised ones after inlining */
    if (power_kind == 1) {
#pragma omp parallel for simd schedule(static) num_threads(threads)
        for (int64_t i = 0; i < n; ++i)
            acc[i] = classp_element(p, g, acc, i, 1, pw, inv_pw, e, th, step, apply_scaling, include_current,
                                    thresholded);
    } else {
#pragma omp parallel for simd schedule(static) num_threads(threads)
        for (int64_t i = 0; i < n; ++i)
            acc[i] = classp_element(p, g, acc, i, 2, pw, inv_pw, e, th, step, apply_scaling, include_current,
                                    thresholded);
    }
}

/* Schedule-Free AdamW at y: v <- b2 v + (1 - b2) g²;  n = g / (sqrt(v) / bc2 + eps) + wd y;
 * y <- y + ckp (z - y) + lr (b1 (1 - ckp) - 1) n;  z <- z - lr n. */
void optarena_sf_adamw_f32(float *y, const float *g, float *z, float *v, int64_t n, double lr, double ckp,
                           double beta1, double beta2, double bc2_sqrt, double eps, double weight_decay, int threads) {
    const float b2 = (float)beta2, w2 = (float)(1.0 - beta2), bc = (float)bc2_sqrt, e = (float)eps;
    const float wd = (float)weight_decay, c = (float)ckp, step = (float)lr;
    const float ystep = (float)(lr * (beta1 * (1.0 - ckp) - 1.0));
#pragma omp parallel for simd schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i], yi = y[i], zi = z[i];
        const float vi = v[i] * b2 + (gi * gi) * w2;
        v[i] = vi;
        const float normalized = gi / (sqrtf(vi) / bc + e) + yi * wd;
        y[i] = (yi + (zi - yi) * c) + normalized * ystep;
        z[i] = zi - normalized * step;
    }
}
