/* Token decoding for both residual codecs, compiled at install time and called through ctypes
 * (store/_native.py), which releases the GIL for the call: a query's threads decode in parallel.
 *
 * Both codecs decode a token as   centroid[code] + concat over byte positions s of lut_s[row[s]],
 * each lut entry holding w floats (dims s*w .. s*w+w-1), then re-normalize:
 *   scalar codec (FORMAT.md 7.4): one lut for every position (lut_pos_stride 0), w = 8 / nbits;
 *   pq codec (FORMAT.md 7.5): lut_s = codebook s (lut_pos_stride 256 * w), w = dim / m.
 * The numpy code in store/_codec.py and store/_pq.py computes the same values; the sum of squares
 * for the norm is accumulated in another order here, so results agree to ~1 ulp, not bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

#define PREFETCH_AHEAD 4 /* tokens */

/* One token: v = centroid + the m lut entries of its row, widths W known at compile time where a
 * codec uses them. The entries are first copied side by side into v (fixed-size moves), then the
 * centroid is added in one pass over dim floats: the same single addition per float as adding
 * entry by entry, but vectorized whatever W is (entry by entry, W = 6 ran ~300 ns a token at d=384). */
#define ADD_ROW(W)                                                                       \
    for (int64_t s = 0; s < m; s++)                                                      \
        memcpy(v + s * (W), lut + s * lut_pos_stride + (int64_t)row[s] * (W), (W) * sizeof(float)); \
    for (int64_t j = 0; j < m * (W); j++)                                                \
        v[j] = cent[j] + v[j];

/* Bumped whenever a signature here changes: store/_native.py refuses a library built from other sources
 * (calling a function with the wrong arguments would crash the process, not raise). */
int ls_decode_abi(void) { return 2; }

/* Returns 0, or -1 (nothing decoded past the bad token) when a code is not below k, the number of
 * centroids: codes come from disk, and a wrong one must be an error, never a read out of bounds. */
HOT int ls_decode(const float *centroids, int64_t k, int64_t dim, const uint16_t *codes, int64_t n,
                  const float *lut, int64_t lut_pos_stride, int64_t w, const uint8_t *rows, int64_t m,
                  int normalize, float *out)
{
    for (int64_t t = 0; t < n; t++) {
        if ((int64_t)codes[t] >= k)
            return -1;
        if (t + PREFETCH_AHEAD < n && (int64_t)codes[t + PREFETCH_AHEAD] < k) {
            /* centroid rows are scattered over a table of K * dim floats (8-25 MB): ask for a later
             * token's row now, so its cache misses overlap this token's work */
            const char *next = (const char *)(centroids + (int64_t)codes[t + PREFETCH_AHEAD] * dim);
            for (int64_t b = 0; b < dim * (int64_t)sizeof(float); b += 64)
                __builtin_prefetch(next + b);
        }
        float *v = out + t * dim;
        const float *cent = centroids + (int64_t)codes[t] * dim;
        const uint8_t *row = rows + t * m;
        switch (w) {
        case 2: ADD_ROW(2) break;
        case 4: ADD_ROW(4) break;
        case 6: ADD_ROW(6) break;
        case 8: ADD_ROW(8) break;
        case 12: ADD_ROW(12) break;
        case 16: ADD_ROW(16) break;
        case 24: ADD_ROW(24) break;
        default: ADD_ROW(w) break;
        }
        if (normalize) { /* 8 running sums (a vector register), not one serial chain of dim adds */
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t j = 0;
            for (; j + 8 <= dim; j += 8)
                for (int l = 0; l < 8; l++)
                    acc[l] += v[j + l] * v[j + l];
            float ss = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for (; j < dim; j++)
                ss += v[j] * v[j];
            float norm = sqrtf(ss);
            if (!(norm > 1e-12f))
                norm = 1e-12f;
            for (j = 0; j < dim; j++)
                v[j] /= norm;
        }
    }
    return 0;
}

/* An importable (empty) module, so setuptools builds and names the file like any extension. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", "lodestore decode kernel (used through ctypes)", -1, NULL};
PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }
