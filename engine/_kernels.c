/* Search kernels, compiled at install time and called through ctypes (engine/_native.py), which
 * releases the GIL for the call, so a query's threads run them in parallel. Each computes what the
 * numpy code in engine/_maxsim.py and engine/_searcher.py computes: centroid interaction and probing
 * bit for bit; the segmented MaxSim the same maxima, summed in query-token order (numpy may sum
 * them pairwise: equal to float32 rounding).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "_abi.h" /* lodestore/_abi.h: status codes and ABI versions */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
/* x86-64-v4 (AVX-512): the 32-lane int16 rows below fit one register (faster than AVX2: docs/BENCHMARKS.md 3.4);
 * target_clones takes "arch=" from GCC 12 on (an older GCC would fail the build, and the numpy code would run) */
#define HOT __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

#define STACK_Q 256

typedef int16_t v32s __attribute__((vector_size(64))); /* one 32-lane int16 row: a zmm, or two ymm with AVX2 */
#define QB 32 /* query tokens per block: fixed-size inner loops the compiler turns into a few vector ops */

/* engine/_native.py refuses a library built from other sources (lodestore/_abi.h). */
int ls_kernels_abi(void) { return LS_KERNELS_ABI; }

/* Centroid interaction: table is (k, q) int16, row c = centroid c's scores against the q query
 * tokens. Document i's centroid ids are ids[starts[i] .. starts[i] + lens[i]) (lens[i] >= 1), inside
 * the n_ids ids. out[i] = sum over query tokens of the max over the document's ids: the int16 maxima
 * summed exactly (as integers), then converted to float32, as numpy's float32 sum of them is exact.
 * The ids come from the store's files: a span outside ids or an id not below k returns
 * LS_ERR_BAD_INDEX (out partly written), never a read out of bounds. */
HOT int ls_centroid_interaction(const int16_t *table, int64_t k, int64_t q, const uint16_t *ids, int64_t n_ids,
                                const int64_t *starts, const int64_t *lens, int64_t n, float *out)
{
    for (int64_t d = 0; d < n; d++) /* every span first: the prefetch below reads the next document's ids */
        if (starts[d] < 0 || lens[d] < 0 || starts[d] > n_ids || lens[d] > n_ids - starts[d])
            return LS_ERR_BAD_INDEX;
    int16_t stack[STACK_Q];
    int16_t *best = q <= STACK_Q ? stack : (int16_t *)malloc((size_t)q * sizeof(int16_t));
    if (!best)
        return LS_ERR_NOMEM;
    int rc = LS_OK;
    for (int64_t d = 0; d < n; d++) {
        const uint16_t *di = ids + starts[d];
        if (lens[d] < 1) { /* a store never holds an empty document; never read past its span either */
            out[d] = 0.0f;
            continue;
        }
        for (int64_t j = 0; j < lens[d]; j++)
            if ((int64_t)di[j] >= k) {
                rc = LS_ERR_BAD_INDEX;
                goto done;
            }
        if (d + 1 < n) { /* the rows are scattered over a table of ~1 MB: ask for the next document's early */
            const uint16_t *dn = ids + starts[d + 1];
            for (int64_t j = 0; j < lens[d + 1]; j++)
                __builtin_prefetch(table + (int64_t)dn[j] * q);
        }
        if (q == QB) { /* the common query length: the running max stays in registers */
            v32s b, r;
            memcpy(&b, table + (int64_t)di[0] * QB, sizeof(b));
            for (int64_t j = 1; j < lens[d]; j++) {
                memcpy(&r, table + (int64_t)di[j] * QB, sizeof(r));
                v32s gt = r > b; /* lanes -1 where r wins: vector ?: is C++ only; this compiles to one max */
                b = (r & gt) | (b & ~gt);
            }
            memcpy(best, &b, sizeof(b));
            int64_t sum = 0;
            for (int64_t i = 0; i < QB; i++)
                sum += best[i];
            out[d] = (float)sum;
            continue;
        }
        memcpy(best, table + (int64_t)di[0] * q, (size_t)q * sizeof(int16_t));
        for (int64_t j = 1; j < lens[d]; j++) {
            const int16_t *row = table + (int64_t)di[j] * q;
            for (int64_t i = 0; i < q; i++)
                best[i] = row[i] > best[i] ? row[i] : best[i];
        }
        int64_t sum = 0;
        for (int64_t i = 0; i < q; i++)
            sum += best[i];
        out[d] = (float)sum;
    }
done:
    if (best != stack)
        free(best);
    return rc;
}

/* Segmented MaxSim: sim is (t, q) float32, documents as consecutive runs of lens[i] >= 1 rows, t in all
 * (else LS_ERR_ARGS). out[i] = sum over the q columns (in column order, in float32) of the column max
 * over the run. */
HOT int ls_segment_max_sum(const float *sim, int64_t t, int64_t q, const int64_t *lens, int64_t n, float *out)
{
    int64_t total = 0;
    for (int64_t d = 0; d < n; d++) {
        if (lens[d] < 1 || lens[d] > t - total)
            return LS_ERR_ARGS;
        total += lens[d];
    }
    float stack[STACK_Q];
    float *best = q <= STACK_Q ? stack : (float *)malloc((size_t)q * sizeof(float));
    if (!best)
        return LS_ERR_NOMEM;
    const float *row = sim;
    for (int64_t d = 0; d < n; d++) {
        memcpy(best, row, (size_t)q * sizeof(float));
        row += q;
        for (int64_t j = 1; j < lens[d]; j++, row += q)
            for (int64_t i = 0; i < q; i++)
                best[i] = row[i] > best[i] ? row[i] : best[i];
        float sum = 0.0f;
        for (int64_t i = 0; i < q; i++)
            sum += best[i];
        out[d] = sum;
    }
    if (best != stack)
        free(best);
    return LS_OK;
}

/* Probing: table is (b, q) int16 (b centroids of one block, centroid-major). For every query token
 * (column) i, its n best centroids: out_cols[i*n + r] (block-local row numbers) and out_vals[i*n + r],
 * r = 0 best, ordered by value descending, ties by lower row first (what n argmax passes give).
 * n <= b. With floor0 (else NULL), only values >= floor0[i] count for token i, and unfilled slots keep
 * column -1: "the n best of those within delta of the best" in a pass that inserts almost nothing.
 * One pass over the block; a row is inserted only when it beats a token's n-th best. */
HOT int ls_top_rows(const int16_t *table, int64_t b, int64_t q, int64_t n, const int16_t *floor0, int64_t *out_cols,
                    int16_t *out_vals)
{
    if (n < 1 || n > b || q < 0)
        return LS_ERR_ARGS;
    int16_t stack[STACK_Q];
    int16_t *floor_ = q <= STACK_Q ? stack : (int16_t *)malloc((size_t)q * sizeof(int16_t));
    if (!floor_)
        return LS_ERR_NOMEM;
    for (int64_t i = 0; i < q; i++) {
        floor_[i] = floor0 ? floor0[i] : INT16_MIN; /* a row can enter token i's list only if its value is >= floor_[i] */
        for (int64_t r = 0; r < n; r++) {
            out_vals[i * n + r] = INT16_MIN;
            out_cols[i * n + r] = -1;
        }
    }
    for (int64_t c = 0; c < b; c++) {
        const int16_t *row = table + c * q;
        int any = 0; /* one vectorized compare of the row against every token's floor; most rows stop here */
        for (int64_t i = 0; i < q; i++)
            any |= row[i] >= floor_[i];
        if (!any)
            continue;
        for (int64_t i = 0; i < q; i++) {
            int16_t v = row[i];
            int16_t *vals = out_vals + i * n;
            int64_t *cols = out_cols + i * n;
            if (v < floor_[i] || (cols[n - 1] >= 0 && v <= vals[n - 1]))
                continue; /* under the floor, or full and not better than the n-th best (a tie loses to the lower row) */
            int64_t r = n - 1;
            while (r > 0 && (cols[r - 1] < 0 || v > vals[r - 1])) {
                vals[r] = vals[r - 1];
                cols[r] = cols[r - 1];
                r--;
            }
            vals[r] = v;
            cols[r] = c;
            if (cols[n - 1] >= 0)
                floor_[i] = vals[n - 1] == INT16_MAX ? INT16_MAX : (int16_t)(vals[n - 1] + 1);
        }
    }
    if (floor_ != stack)
        free(floor_);
    return LS_OK;
}


/* One token's scores for query tokens [i0, i0 + nb) (nb <= QB) into best[]. */
static inline __attribute__((always_inline)) void residual_block(
    const int16_t *restrict table_row, const int16_t *restrict lut, int64_t q, int64_t m, const uint8_t *restrict row,
    int64_t i0, int64_t nb, float ts, float ls, float *restrict best)
{
    int16_t acc[QB];
    if (nb == QB) { /* one 32-lane accumulator that stays in registers across the m lookups */
        v32s a = {0};
        for (int64_t j = 0; j < m; j++) {
            v32s x;
            memcpy(&x, lut + ((j << 8) + row[j]) * q + i0, sizeof(x));
            a += x;
        }
        memcpy(acc, &a, sizeof(a));
        for (int i = 0; i < QB; i++) {
            float v = (float)table_row[i0 + i] * ts + (float)acc[i] * ls;
            best[i0 + i] = v > best[i0 + i] ? v : best[i0 + i];
        }
        return;
    }
    for (int64_t i = 0; i < nb; i++)
        acc[i] = 0;
    for (int64_t j = 0; j < m; j++) {
        const int16_t *restrict l = lut + ((j << 8) + row[j]) * q + i0;
        for (int64_t i = 0; i < nb; i++)
            acc[i] = (int16_t)(acc[i] + l[i]);
    }
    for (int64_t i = 0; i < nb; i++) {
        float v = (float)table_row[i0 + i] * ts + (float)acc[i] * ls;
        best[i0 + i] = v > best[i0 + i] ? v : best[i0 + i];
    }
}

/* Residual interaction: MaxSim with each token's residual scored from lookup tables, never decoded.
 * table is (k, q) int16 (the query-centroid scores, units of 1/table_scale); lut is (m, 256, q) int16
 * (units of 1/lut_scale): row (j, v) = what residual byte j holding value v adds to each query token's
 * score. Token t's score against query token i is table[codes[t], i] / table_scale + (sum over j of
 * lut[j, rows[t, j], i]) / lut_scale, i.e. <q_i, centroid + residual> without re-normalizing.
 * Documents are consecutive runs of lens[d] >= 1 tokens. out[d] = sum over i (in order, float32) of
 * the max over the run. The lut sums stay in int16: the caller picks lut_scale so that no partial
 * sum can leave it. Query tokens go in blocks of QB, each block's sums held in registers.
 * codes and rows hold t tokens; runs past them are LS_ERR_ARGS. The codes come from the store's files:
 * one not below k returns LS_ERR_BAD_INDEX before anything is scored. */
HOT int ls_residual_maxsim(const int16_t *table, int64_t k, int64_t q, const int16_t *lut, int64_t m,
                           const uint16_t *codes, const uint8_t *rows, int64_t t, const int64_t *lens, int64_t n,
                           float table_scale, float lut_scale, float *out)
{
    int64_t total = 0;
    for (int64_t d = 0; d < n; d++) {
        if (lens[d] < 1 || lens[d] > t - total)
            return LS_ERR_ARGS;
        total += lens[d];
    }
    for (int64_t j = 0; j < total; j++)
        if ((int64_t)codes[j] >= k)
            return LS_ERR_BAD_INDEX;
    float best_stack[STACK_Q];
    float *best = q <= STACK_Q ? best_stack : (float *)malloc((size_t)q * sizeof(float));
    if (!best)
        return LS_ERR_NOMEM;
    const float ts = 1.0f / table_scale, ls = 1.0f / lut_scale;
    for (int64_t d = 0; d < n; d++) {
        for (int64_t i = 0; i < q; i++)
            best[i] = -INFINITY;
        for (int64_t t = 0; t < lens[d]; t++, rows += m, codes++) {
            const int16_t *table_row = table + (int64_t)codes[0] * q;
            for (int64_t i0 = 0; i0 < q; i0 += QB)
                residual_block(table_row, lut, q, m, rows, i0, q - i0 < QB ? q - i0 : QB, ts, ls, best);
        }
        float sum = 0.0f;
        for (int64_t i = 0; i < q; i++)
            sum += lens[d] > 0 ? best[i] : 0.0f;
        out[d] = sum;
    }
    if (best != best_stack)
        free(best);
    return LS_OK;
}

/* Query-centroid scores from int8 copies of both (engine/_searcher.py _score_and_probe):
 * out[c * q + i] = (int16) trunc(((double)dot_c_i * cscale[c]) * qscale[i]) for c < k, i < q, where dot_c_i is
 * the exact int32 dot product of cent[c] (int8, d of them) and query token i. The query comes as qt: its int8
 * values + 128 (so unsigned), d/4 groups of 4 bytes for each of qp tokens (qp = q rounded up to 16, padding
 * 128s): qt[(g * qp + i) * 4 + j] = qry[i][4g + j] + 128. csum[c] = the sum of cent[c]'s bytes, which the +128
 * adds 128 times over. d is a multiple of 4. With AVX-512 VNNI one instruction multiplies and adds 64 byte
 * pairs (4x the float32 product's rate); elsewhere plain loops give the same integers. numpy's fallback
 * computes the same: the int8 values' product in float32 is exact (|sums| < 2^24 for d <= 1040). */
static inline void score_row_out(const int32_t *dot, int64_t n, double cs, const double *qscale, int16_t *out)
{
    for (int64_t l = 0; l < n; l++)
        out[l] = (int16_t)trunc(((double)dot[l] * cs) * qscale[l]);
}

static void score_i8_plain(const int8_t *cent, const int32_t *csum, const double *cscale, int64_t k, int64_t d,
                           const uint8_t *qt, int64_t qp, const double *qscale, int64_t q, int16_t *out)
{
    int32_t dot[16];
    for (int64_t c = 0; c < k; c++) {
        const int8_t *row = cent + c * d;
        for (int64_t i0 = 0; i0 < q; i0 += 16) {
            int64_t nb = q - i0 < 16 ? q - i0 : 16;
            for (int64_t l = 0; l < nb; l++) {
                int32_t acc = 0;
                for (int64_t g = 0; g < d / 4; g++)
                    for (int j = 0; j < 4; j++)
                        acc += (int32_t)row[4 * g + j] * ((int32_t)qt[(g * qp + i0 + l) * 4 + j] - 128);
                dot[l] = acc;
            }
            score_row_out(dot, nb, cscale[c], qscale + i0, out + c * q + i0);
        }
    }
    (void)csum;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 10
#include <immintrin.h>
#define LS_VNNI 1
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) static void score_i8_vnni(
    const int8_t *cent, const int32_t *csum, const double *cscale, int64_t k, int64_t d, const uint8_t *qt,
    int64_t qp, const double *qscale, int64_t q, int16_t *out)
{
    const int64_t G = d / 4;
    int32_t dot[4][16];
    for (int64_t i0 = 0; i0 < qp; i0 += 16) {
        int64_t nb = q - i0 < 16 ? q - i0 : 16;
        if (nb <= 0)
            break;
        int64_t c = 0;
        for (; c < k; c += 4) { /* four centroids share each load of the query group */
            int64_t nc = k - c < 4 ? k - c : 4;
            const int8_t *r[4];
            for (int u = 0; u < 4; u++)
                r[u] = cent + (c + (u < nc ? u : 0)) * d;
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t g = 0; g < G; g++) {
                __m512i qv = _mm512_loadu_si512((const void *)(qt + (g * qp + i0) * 4));
                int32_t w0, w1, w2, w3;
                memcpy(&w0, r[0] + 4 * g, 4);
                memcpy(&w1, r[1] + 4 * g, 4);
                memcpy(&w2, r[2] + 4 * g, 4);
                memcpy(&w3, r[3] + 4 * g, 4);
                a0 = _mm512_dpbusd_epi32(a0, qv, _mm512_set1_epi32(w0));
                a1 = _mm512_dpbusd_epi32(a1, qv, _mm512_set1_epi32(w1));
                a2 = _mm512_dpbusd_epi32(a2, qv, _mm512_set1_epi32(w2));
                a3 = _mm512_dpbusd_epi32(a3, qv, _mm512_set1_epi32(w3));
            }
            if (nc == 4) { /* the same double products and truncation as score_row_out, 8 lanes at a time */
                const __m512i acc[4] = {a0, a1, a2, a3};
                const __mmask16 keep = (__mmask16)((1u << nb) - 1u); /* lanes l < nb: qscale may hold only q */
                const __m512d qs0 = _mm512_maskz_loadu_pd((__mmask8)keep, qscale + i0);
                const __m512d qs1 = _mm512_maskz_loadu_pd((__mmask8)(keep >> 8), qscale + i0 + 8);
                for (int u = 0; u < 4; u++) {
                    __m512i dv = _mm512_sub_epi32(acc[u], _mm512_set1_epi32(128 * csum[c + u]));
                    __m512d cs = _mm512_set1_pd(cscale[c + u]);
                    __m512d lo = _mm512_cvtepi32_pd(_mm512_castsi512_si256(dv));
                    __m512d hi = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(dv, 1));
                    lo = _mm512_mul_pd(_mm512_mul_pd(lo, cs), qs0); /* (dot x cscale) x qscale, as score_row_out */
                    hi = _mm512_mul_pd(_mm512_mul_pd(hi, cs), qs1);
                    __m512i t = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvttpd_epi32(lo)),
                                                   _mm512_cvttpd_epi32(hi), 1); /* truncated toward zero */
                    _mm256_mask_storeu_epi16(out + (c + u) * q + i0, keep, _mm512_cvtepi32_epi16(t));
                }
                continue;
            }
            _mm512_storeu_si512((void *)dot[0], a0);
            _mm512_storeu_si512((void *)dot[1], a1);
            _mm512_storeu_si512((void *)dot[2], a2);
            _mm512_storeu_si512((void *)dot[3], a3);
            for (int u = 0; u < nc; u++) {
                for (int l = 0; l < 16; l++)
                    dot[u][l] -= 128 * csum[c + u];
                score_row_out(dot[u], nb, cscale[c + u], qscale + i0, out + (c + u) * q + i0);
            }
        }
    }
}
#endif

/* Whether this CPU (and this build) runs the VNNI path. */
int ls_score_table_has_vnni(void)
{
#ifdef LS_VNNI
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

HOT int ls_score_table_i8(const int8_t *cent, const int32_t *csum, const double *cscale, int64_t k, int64_t d,
                          const uint8_t *qt, int64_t qp, const double *qscale, int64_t q, int16_t *out)
{
    if (d % 4 != 0 || qp % 16 != 0 || qp < q)
        return LS_ERR_ARGS;
#ifdef LS_VNNI
    if (ls_score_table_has_vnni()) {
        score_i8_vnni(cent, csum, cscale, k, d, qt, qp, qscale, q, out);
        return LS_OK;
    }
#endif
    score_i8_plain(cent, csum, cscale, k, d, qt, qp, qscale, q, out);
    return LS_OK;
}

/* The plain loops whatever the CPU, so the tests check them on machines with VNNI. */
int ls_score_table_i8_plain(const int8_t *cent, const int32_t *csum, const double *cscale, int64_t k, int64_t d,
                            const uint8_t *qt, int64_t qp, const double *qscale, int64_t q, int16_t *out)
{
    if (d % 4 != 0 || qp % 16 != 0 || qp < q)
        return LS_ERR_ARGS;
    score_i8_plain(cent, csum, cscale, k, d, qt, qp, qscale, q, out);
    return LS_OK;
}


static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "lodestore search kernels (used through ctypes)", -1, NULL};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
