/* Hand-written CPU kernels for optimizer steps that need a reduction before their update.
 *
 * torch.compile (optarena/optim/_fused.py) turns a purely elementwise step into one loop,
 * but not a step whose update needs a row or tensor reduction first: Inductor emits the
 * reduction and the update as two loops, so the data is read twice. Here each kernel
 * reads and writes every element once where the method allows it (AdamP, SGDP, SCALE's
 * rows), or takes two passes whose second reads what the first just left in the cache
 * (SCALE's embedding columns, AM-SGD, AM-AdamW).
 *
 * Built by optarena/optim/_native.py with the system C compiler (-O3 -march=native
 * -fopenmp -ffp-contract=off); float32, contiguous tensors only. The per-element
 * arithmetic follows the foreach code of each optimizer op by op (no fused multiply-add),
 * so the two paths agree to float32 rounding. Flat reductions accumulate in double over
 * fixed blocks combined in a fixed order, row reductions in float32 within one thread (as
 * the eager test does): no result depends on the thread count.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16384 /* elements per partial sum of a flat reduction */

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

/* AdamP without projection, fused with the per-row sums of the scale-invariance test (over θ
 * before the update) into sums[3 r + k]; their cosines go to cosines[2]. */
void optarena_adamp_f32(float *p, const float *g, float *m, float *v, int64_t rows, int64_t cols,
                        double beta1, double beta2, double bc2_sqrt, double eps, double step_size,
                        double decay, int nesterov, double test_eps, double *sums, double *cosines,
                        int threads) {
    const float w1 = (float)(1.0 - beta1), b2 = (float)beta2, w2 = (float)(1.0 - beta2);
    const float bc = (float)bc2_sqrt, e = (float)eps, keep = (float)(1.0 - decay), step = (float)-step_size;
    const int decayed = decay != 0.0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
        float *pr = p + r * cols, *mr = m + r * cols, *vr = v + r * cols;
        const float *gr = g + r * cols;
        float dot = 0.0f, gsq = 0.0f, psq = 0.0f;
#pragma omp simd reduction(+ : dot, gsq, psq)
        for (int64_t c = 0; c < cols; ++c) {
            const float gi = gr[c], pi = pr[c];
            dot += gi * pi;
            gsq += gi * gi;
            psq += pi * pi;
            const float mi = lerp(mr[c], gi, w1);
            const float vi = vr[c] * b2 + w2 * (gi * gi);
            mr[c] = mi;
            vr[c] = vi;
            const float first = nesterov ? lerp(mi, gi, w1) : mi;
            const float update = first / (sqrtf(vi) / bc + e);
            const float decayed_p = decayed ? pi * keep : pi;
            pr[c] = decayed_p + step * update;
        }
        sums[3 * r] = dot;
        sums[3 * r + 1] = gsq;
        sums[3 * r + 2] = psq;
    }
    invariance_cosines(sums, rows, test_eps, cosines);
}

/* SGDP without projection, fused with the same test as optarena_adamp_f32. */
void optarena_sgdp_f32(float *p, const float *g, float *buf, int64_t rows, int64_t cols, double momentum,
                       double damp, double lr, double decay, int nesterov, double test_eps, double *sums,
                       double *cosines, int threads) {
    const float mu = (float)momentum, dm = (float)damp, keep = (float)(1.0 - decay), step = (float)-lr;
    const int decayed = decay != 0.0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
        float *pr = p + r * cols, *br = buf + r * cols;
        const float *gr = g + r * cols;
        float dot = 0.0f, gsq = 0.0f, psq = 0.0f;
#pragma omp simd reduction(+ : dot, gsq, psq)
        for (int64_t c = 0; c < cols; ++c) {
            const float gi = gr[c], pi = pr[c];
            dot += gi * pi;
            gsq += gi * gi;
            psq += pi * pi;
            const float bi = br[c] * mu + dm * gi;
            br[c] = bi;
            const float update = nesterov ? gi + mu * bi : bi;
            const float decayed_p = decayed ? pi * keep : pi;
            pr[c] = decayed_p + step * update;
        }
        sums[3 * r] = dot;
        sums[3 * r + 1] = gsq;
        sums[3 * r + 2] = psq;
    }
    invariance_cosines(sums, rows, test_eps, cosines);
}

/* SCALE on a hidden or readout matrix: θ <- θ (1 - decay) - lr d / max(rms of d's row, 1e-8), one pass
 * per row (the row is read from memory once, then again from L1). With buf, d is the momentum
 * buf <- lerp(buf, g, weight) computed in the same pass; without it, d = g. */
void optarena_row_rms_f32(float *p, const float *g, float *buf, int64_t rows, int64_t cols, double weight,
                          double lr, double decay, int threads) {
    const float w = (float)weight, keep = (float)(1.0 - decay), step = (float)-lr;
    const int decayed = decay != 0.0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < rows; ++r) {
        float *pr = p + r * cols;
        const float *gr = g + r * cols;
        float *dr = buf ? buf + r * cols : (float *)gr;
        float sq = 0.0f; /* float32 sums of one row, as the eager code's norm */
        if (buf) {
#pragma omp simd reduction(+ : sq)
            for (int64_t c = 0; c < cols; ++c) {
                const float di = lerp(dr[c], gr[c], w);
                dr[c] = di;
                sq += di * di;
            }
        } else {
#pragma omp simd reduction(+ : sq)
            for (int64_t c = 0; c < cols; ++c)
                sq += dr[c] * dr[c];
        }
        const double rms = sqrt((double)sq / (double)cols);
        const float scale = (float)(rms > 1e-8 ? rms : 1e-8);
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) {
            const float decayed_p = decayed ? pr[c] * keep : pr[c];
            pr[c] = decayed_p + step * (dr[c] / scale);
        }
    }
}

/* SCALE on an embedding: the same with the RMS of each column (over the vocabulary). Two passes: the
 * column sums (each thread owns a range of columns, so no partial sums are combined), then the update.
 * colsq: cols doubles of scratch. */
void optarena_col_rms_f32(float *p, const float *g, int64_t rows, int64_t cols, double lr, double decay,
                          double *colsq, int threads) {
    const float keep = (float)(1.0 - decay), step = (float)-lr;
    const int decayed = decay != 0.0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < cols; ++c)
            colsq[c] = 0.0;
        /* each thread sweeps all rows over its own slice of columns */
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t t = 0, nt = 1;
#endif
        const int64_t c0 = cols * t / nt, c1 = cols * (t + 1) / nt;
        for (int64_t r = 0; r < rows; ++r) {
            const float *gr = g + r * cols;
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c)
                colsq[c] += (double)gr[c] * gr[c];
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t c = 0; c < cols; ++c) {
            const double rms = sqrt(colsq[c] / (double)rows);
            colsq[c] = rms > 1e-8 ? rms : 1e-8;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            float *pr = p + r * cols;
            const float *gr = g + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) {
                const float decayed_p = decayed ? pr[c] * keep : pr[c];
                pr[c] = decayed_p + step * (gr[c] / (float)colsq[c]);
            }
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
        if (wd != 0.0f) {
#pragma omp simd reduction(+ : hsq, diffsq)
            for (int64_t i = lo; i < hi; ++i) {
                const float h = g[i] + wd * p[i], diff = h - d[i];
                hsq += (double)h * h;
                diffsq += (double)diff * diff;
            }
        } else { /* θ is not read at all */
#pragma omp simd reduction(+ : hsq, diffsq)
            for (int64_t i = lo; i < hi; ++i) {
                const float h = g[i], diff = h - d[i];
                hsq += (double)h * h;
                diffsq += (double)diff * diff;
            }
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
#pragma omp simd reduction(+ : gap, pull, curvature)
        for (int64_t i = lo; i < hi; ++i) {
            const float gi = g[i], di = d[i];
            const float vi = v[i] * b2 + (gi * gi) * w2;
            v[i] = vi;
            const float precond = (sqrtf(vi) * inv_bc + e) * corr;
            const float damp = precond * la + 1.0f;
            const float r = 1.0f / (precond * damp);
            const float weighted = (di - gi) * r;
            gap += (double)gi * (di * (damp * r) + p[i] * wd);
            pull += (double)weighted * (gi + (damp - 1.0f) * di);
            curvature += (double)weighted * (di - gi);
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
