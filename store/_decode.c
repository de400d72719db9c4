/* Token decoding for both residual codecs, and reading CRC-checked runs of inner chunks; compiled at
 * install time and called through ctypes (store/_native.py), which releases the GIL for the call: a
 * query's threads decode and read in parallel.
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
#include <stdlib.h>
#include <errno.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <fcntl.h>

#include "_abi.h" /* lodestore/_abi.h: status codes and ABI versions */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

#define PREFETCH_AHEAD 4 /* tokens */

/* One token: v = centroid + the m lut entries of its row, widths W known at compile time where a
 * codec uses them. The entries are first copied side by side into v (fixed-size moves), then the
 * centroid is added in one pass over dim floats: the same single addition per float as adding
 * entry by entry, but vectorized whatever W is (docs/BENCHMARKS.md 3.4). */
#define ADD_ROW(W)                                                                       \
    for (int64_t s = 0; s < m; s++)                                                      \
        memcpy(v + s * (W), lut + s * lut_pos_stride + (int64_t)row[s] * (W), (W) * sizeof(float)); \
    for (int64_t j = 0; j < m * (W); j++)                                                \
        v[j] = cent[j] + v[j];

/* store/_native.py refuses a library built from other sources (lodestore/_abi.h). */
int ls_decode_abi(void) { return LS_DECODE_ABI; }

/* Returns LS_OK; LS_ERR_ARGS when the lut (lut_len floats) cannot hold m positions of 256 entries of w
 * floats lut_pos_stride apart, or m * w != dim; LS_ERR_BAD_INDEX (nothing decoded past the bad token) when
 * a code is not below k, the number of centroids: codes come from disk, and a wrong one must be an error,
 * never a read out of bounds. */
HOT int ls_decode(const float *centroids, int64_t k, int64_t dim, const uint16_t *codes, int64_t n,
                  const float *lut, int64_t lut_len, int64_t lut_pos_stride, int64_t w, const uint8_t *rows,
                  int64_t m, int normalize, float *out)
{
    if (m < 0 || w < 0 || lut_pos_stride < 0 || m * w != dim
            || (m > 0 && (m - 1) * lut_pos_stride + 256 * w > lut_len))
        return LS_ERR_ARGS;
    for (int64_t t = 0; t < n; t++) {
        if ((int64_t)codes[t] >= k)
            return LS_ERR_BAD_INDEX;
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
    return LS_OK;
}

/* CRC32C (Castagnoli, reflected, init and final xor ~0: what zarr's crc32c codec stores), with the
 * SSE 4.2 instruction where the CPU has it, else a byte table. */
static uint32_t crc_table[256];

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32c_soft(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const uint8_t *p, size_t n)
{
    uint64_t c = 0xFFFFFFFFu;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

static uint32_t (*crc32c_fn)(const uint8_t *, size_t) = crc32c_soft;

/* Picked once when the library loads, before any thread can call in. */
__attribute__((constructor)) static void crc32c_pick(void)
{
    crc_table_init();
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc32c_fn = crc32c_hw;
#endif
}

uint32_t ls_crc32c(const uint8_t *p, int64_t n) { return crc32c_fn(p, (size_t)n); }

/* The table version whatever the CPU, so the tests check it on machines that have the instruction. */
uint32_t ls_crc32c_table(const uint8_t *p, int64_t n) { return crc32c_soft(p, (size_t)n); }

#define RUN_IOV 512 /* chunks per preadv: 2 buffers each, IOV_MAX is 1024 on Linux (store/_rawarray.py
                       * already cuts runs at 256 chunks, for its Python reader; this keeps the kernel safe alone) */

/* Runs of inner chunks: run r is nchunks[r] chunks lying back to back in file fds[r] from byte
 * offs[r], each chunk_bytes of data followed by its 4-byte little-endian CRC32C (FORMAT.md 8). The
 * data goes to out, every chunk in order and contiguous (the CRCs aside); each chunk's CRC is checked.
 * A read that stops early is continued; only the end of the file counts as short.
 * Returns LS_OK; LS_READ_SHORT when run *bad fell short (file truncated); LS_READ_ERROR on a read error
 * in run *bad (errno set); LS_READ_BAD_CRC when chunk *bad (counted over all runs) does not match its
 * CRC; LS_ERR_ARGS (nothing read) when a count or offset is negative or the runs do not fit out_bytes.
 * waits[0]: how many of its read calls (runs of up to RUN_IOV chunks) had to wait for the device: each is
 * first tried with RWF_NOWAIT, which reads only what the page cache holds; -1 where the kernel cannot say
 * (then every call is a plain blocking read). It is what tells whether read-ahead came in time. */
/* One read call's worth of a run: n <= RUN_IOV chunks back to back in fd from byte off, data to out
 * (contiguous), each chunk's CRC checked. *nowait_ok: whether RWF_NOWAIT may be tried (cleared where the
 * file system cannot say); *waited set when the read had to wait for the device. Returns LS_OK,
 * LS_READ_ERROR (errno set), LS_READ_SHORT, or LS_READ_BAD_CRC with *bad_k the chunk within the n. */
static int read_run(int fd, int64_t off, int64_t n, int64_t chunk_bytes, uint8_t *out, int *nowait_ok, int *waited,
                    int64_t *bad_k)
{
    struct iovec iov[2 * RUN_IOV];
    uint32_t crcs[RUN_IOV];
    for (int64_t k = 0; k < n; k++) {
        iov[2 * k].iov_base = out + k * chunk_bytes;
        iov[2 * k].iov_len = (size_t)chunk_bytes;
        iov[2 * k + 1].iov_base = &crcs[k];
        iov[2 * k + 1].iov_len = 4;
    }
    ssize_t want = (ssize_t)(n * (chunk_bytes + 4));
    struct iovec *iv = iov;
    int left = (int)(2 * n);
    off_t at = (off_t)off;
    int cached_only = *nowait_ok;
    *waited = 0;
    for (ssize_t need = want; need > 0;) { /* a read may stop early (a signal, a network file): go on */
        ssize_t got;
#ifdef RWF_NOWAIT
        if (cached_only) {
            got = preadv2(fd, iv, left, at, RWF_NOWAIT);
            if (got < 0 && errno == EAGAIN) { /* not (all) in the page cache: wait for the device */
                cached_only = 0, *waited = 1;
                continue;
            }
            if (got < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)) {
                cached_only = *nowait_ok = 0; /* this file system cannot say: plain reads from now on */
                continue;
            }
            if (got > 0 && got < need) /* the cached part: the rest must come from the device */
                cached_only = 0, *waited = 1;
        } else
#endif
            got = preadv(fd, iv, left, at);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return LS_READ_ERROR;
        if (got == 0) /* end of file before the run's end: the file is truncated */
            return LS_READ_SHORT;
        need -= got;
        at += got;
        while (left > 0 && (size_t)got >= iv->iov_len) {
            got -= (ssize_t)iv->iov_len;
            iv++;
            left--;
        }
        if (left > 0 && got > 0) {
            iv->iov_base = (uint8_t *)iv->iov_base + got;
            iv->iov_len -= (size_t)got;
        }
    }
    for (int64_t k = 0; k < n; k++) {
        uint8_t le[4];
        uint32_t c = ls_crc32c(out + k * chunk_bytes, chunk_bytes);
        le[0] = (uint8_t)c, le[1] = (uint8_t)(c >> 8), le[2] = (uint8_t)(c >> 16), le[3] = (uint8_t)(c >> 24);
        if (memcmp(le, &crcs[k], 4) != 0) {
            *bad_k = k;
            return LS_READ_BAD_CRC;
        }
    }
    return LS_OK;
}

int ls_read_chunks(const int32_t *fds, const int64_t *offs, const int64_t *nchunks, int64_t nruns,
                   int64_t chunk_bytes, uint8_t *out, int64_t out_bytes, int64_t *bad, int64_t *waits)
{
#ifdef RWF_NOWAIT
    int nowait_ok = 1;
#else
    int nowait_ok = 0;
#endif
    waits[0] = 0;
    if (chunk_bytes <= 0)
        return LS_ERR_ARGS;
    int64_t room = out_bytes / chunk_bytes; /* chunks out can hold */
    for (int64_t r = 0; r < nruns; r++) {
        if (nchunks[r] < 0 || offs[r] < 0 || nchunks[r] > room)
            return LS_ERR_ARGS;
        room -= nchunks[r];
    }
    int64_t done = 0; /* chunks read so far, over all runs */
    for (int64_t r = 0; r < nruns; r++) {
        int64_t off = offs[r];
        for (int64_t a = 0; a < nchunks[r]; a += RUN_IOV) {
            int64_t n = nchunks[r] - a < RUN_IOV ? nchunks[r] - a : RUN_IOV, k = 0;
            int waited = 0;
            int rc = read_run(fds[r], off, n, chunk_bytes, out + done * chunk_bytes, &nowait_ok, &waited, &k);
            waits[0] += waited;
            if (rc == LS_READ_BAD_CRC) {
                *bad = done + k;
                return rc;
            }
            if (rc != LS_OK) {
                *bad = r;
                return rc;
            }
            off += n * (chunk_bytes + 4);
            done += n;
        }
    }
    if (!nowait_ok)
        waits[0] = -1;
    return LS_OK;
}

/* Rows [starts[i], stops[i]) of one sharded array (FORMAT.md 8), for every i, concatenated into out in that
 * order: the whole of store/_rawarray.py read_ranges in one call. The array has n_rows rows of row_bytes
 * bytes in inner chunks of inner_rows rows, chunks_per_shard chunks a shard file; shard s is open as
 * fds[s] (-1: not yet) and its chunk offsets are in offsets (uint32, or uint64 where wide, all ones for a
 * chunk absent) once loaded[s]. The chunks the ranges cover are read in order of first use (a chunk the
 * previous range ended in is not read again), back-to-back ones (up to max_run) in one call, each
 * CRC-checked, into a buffer, then each range's rows are copied out in one move.
 * stats: [bytes read, read calls, calls that waited for the device (-1: unknown), shard needed].
 * Returns LS_OK; LS_READ_NEED_SHARD (stats[3] = the shard) when a shard is not open or loaded yet;
 * LS_ERR_ARGS for ranges outside the array, out of order or overlapping (beyond sharing the chunk the previous
 * one ended in: the buffer then never holds a chunk twice), or an out that does not hold them; LS_ERR_BAD_INDEX for an
 * absent chunk; LS_ERR_NOMEM; or read_run's errors. On any error the caller reads again its own way,
 * which names the file and chunk. */
int ls_read_rows(const int32_t *fds, const uint8_t *loaded, int64_t n_shards, const void *offsets, int wide,
                 int64_t n_rows, int64_t row_bytes, int64_t inner_rows, int64_t chunks_per_shard,
                 int64_t max_run, const int64_t *starts, const int64_t *stops, int64_t n, uint8_t *out,
                 int64_t out_bytes, int64_t *stats)
{
#ifdef RWF_NOWAIT
    int nowait_ok = 1;
#else
    int nowait_ok = 0;
#endif
    stats[0] = stats[1] = stats[2] = 0, stats[3] = -1;
    if (row_bytes <= 0 || inner_rows <= 0 || chunks_per_shard <= 0 || max_run < 1 || max_run > RUN_IOV)
        return LS_ERR_ARGS;
    int64_t rows = 0, spans = 0;
    for (int64_t i = 0; i < n; i++) {
        if (starts[i] < 0 || stops[i] < starts[i] || stops[i] > n_rows)
            return LS_ERR_ARGS;
        rows += stops[i] - starts[i];
        if (stops[i] > starts[i])
            spans += (stops[i] - 1) / inner_rows - starts[i] / inner_rows + 1;
    }
    if (rows > out_bytes / row_bytes)
        return LS_ERR_ARGS;
    const int64_t chunk_bytes = inner_rows * row_bytes;
    const uint64_t absent = wide ? UINT64_MAX : UINT32_MAX;
    int64_t *ids = (int64_t *)malloc((size_t)(spans ? spans : 1) * sizeof(int64_t));
    int64_t *first = (int64_t *)malloc((size_t)(n ? n : 1) * sizeof(int64_t)); /* each range's first chunk in buf */
    uint8_t *buf = (uint8_t *)malloc((size_t)(spans ? spans : 1) * (size_t)chunk_bytes);
    int rc = LS_OK;
    if (!ids || !first || !buf) {
        rc = LS_ERR_NOMEM;
        goto done;
    }
    int64_t m = 0; /* chunks to read, in order of first use */
    for (int64_t i = 0; i < n; i++) {
        if (stops[i] <= starts[i]) {
            first[i] = 0;
            continue;
        }
        int64_t c0 = starts[i] / inner_rows, c1 = (stops[i] - 1) / inner_rows;
        int64_t c = c0;
        if (m && ids[m - 1] == c0) /* the chunk the previous range ended in */
            first[i] = m - 1, c++;
        else
            first[i] = m;
        for (; c <= c1; c++) {
            if (m && c <= ids[m - 1]) { /* ranges out of order or overlapping: the caller reads each chunk once */
                rc = LS_ERR_ARGS;
                goto done;
            }
            int64_t s = c / chunks_per_shard;
            if (s >= n_shards) {
                rc = LS_ERR_ARGS;
                goto done;
            }
            if (fds[s] < 0 || !loaded[s]) {
                stats[3] = s;
                rc = LS_READ_NEED_SHARD;
                goto done;
            }
            ids[m++] = c;
        }
    }
    for (int64_t a = 0; a < m;) { /* runs: consecutive chunks of one shard lying back to back in its file */
        int64_t s = ids[a] / chunks_per_shard;
        uint64_t off = wide ? ((const uint64_t *)offsets)[ids[a]] : ((const uint32_t *)offsets)[ids[a]];
        if (off == absent) {
            rc = LS_ERR_BAD_INDEX;
            goto done;
        }
        int64_t b = a + 1;
        while (b < m && b - a < max_run && ids[b] == ids[b - 1] + 1 && ids[b] / chunks_per_shard == s) {
            uint64_t next = wide ? ((const uint64_t *)offsets)[ids[b]] : ((const uint32_t *)offsets)[ids[b]];
            if (next == absent || next != off + (uint64_t)(b - a) * (uint64_t)(chunk_bytes + 4))
                break;
            b++;
        }
        int waited = 0;
        int64_t k = 0;
        rc = read_run(fds[s], (int64_t)off, b - a, chunk_bytes, buf + a * chunk_bytes, &nowait_ok, &waited, &k);
        stats[1] += 1;
        stats[2] += waited;
        if (rc != LS_OK)
            goto done;
        stats[0] += (b - a) * (chunk_bytes + 4);
        a = b;
    }
    uint8_t *to = out;
    for (int64_t i = 0; i < n; i++) {
        if (stops[i] <= starts[i])
            continue;
        int64_t len = (stops[i] - starts[i]) * row_bytes;
        memcpy(to, buf + first[i] * chunk_bytes + (starts[i] % inner_rows) * row_bytes, (size_t)len);
        to += len;
    }
    if (!nowait_ok)
        stats[2] = -1;
done:
    free(ids);
    free(first);
    free(buf);
    return rc;
}

/* Ask the kernel to read ranges into the page cache now (posix_fadvise WILLNEED queues the reads and
 * returns): range r is lens[r] bytes of file fds[r] from offs[r]. A hint is never an error: failures
 * are ignored. Returns the hints given. */
int64_t ls_advise(const int32_t *fds, const int64_t *offs, const int64_t *lens, int64_t n)
{
    int64_t given = 0;
    for (int64_t r = 0; r < n; r++)
        if (offs[r] >= 0 && lens[r] > 0)
            given += posix_fadvise(fds[r], (off_t)offs[r], (off_t)lens[r], POSIX_FADV_WILLNEED) == 0;
    return given;
}

/* An importable (empty) module, so setuptools builds and names the file like any extension. */
/* posix_fadvise(WILLNEED) of the chunks that rows [starts[i], stops[i]) cover, every i (each inside the
 * array, start < stop, in ascending order), as store/_rawarray.py advise does it: the chunks in order, back-to-back
 * ones of one shard as one hint, absent ones skipped. fds, loaded, offsets, wide as ls_read_rows. Returns the
 * hints the kernel took, or -LS_READ_NEED_SHARD (*need = the shard) when a shard is not open or loaded yet, or
 * LS_ERR_ARGS (itself negative) for a range outside the array or chunks out of order (the caller then hints its own way). */
int64_t ls_advise_rows(const int32_t *fds, const uint8_t *loaded, int64_t n_shards, const void *offsets, int wide,
                       int64_t n_rows, int64_t row_bytes, int64_t inner_rows, int64_t chunks_per_shard,
                       const int64_t *starts, const int64_t *stops, int64_t n, int64_t *need)
{
    if (row_bytes <= 0 || inner_rows <= 0 || chunks_per_shard <= 0)
        return LS_ERR_ARGS;
    const int64_t step = inner_rows * row_bytes + 4;
    const uint64_t absent = wide ? UINT64_MAX : UINT32_MAX;
    int64_t last = -1; /* the last chunk seen */
    for (int64_t i = 0; i < n; i++) { /* every check first: nothing is hinted when the caller must do it */
        if (starts[i] < 0 || stops[i] <= starts[i] || stops[i] > n_rows || starts[i] / inner_rows < last)
            return LS_ERR_ARGS;
        last = (stops[i] - 1) / inner_rows;
        for (int64_t s = starts[i] / inner_rows / chunks_per_shard; s <= last / chunks_per_shard; s++) {
            if (s >= n_shards)
                return LS_ERR_ARGS;
            if (fds[s] < 0 || !loaded[s]) {
                *need = s;
                return -LS_READ_NEED_SHARD;
            }
        }
    }
    int64_t given = 0, run_shard = -1;
    uint64_t run_off = 0, run_len = 0; /* the run being gathered (run_len 0: none) */
    last = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t c0 = starts[i] / inner_rows, c1 = (stops[i] - 1) / inner_rows;
        for (int64_t c = c0 > last ? c0 : last + 1; c <= c1; c++) { /* each chunk once, ascending */
            int64_t s = c / chunks_per_shard;
            uint64_t off = wide ? ((const uint64_t *)offsets)[c] : ((const uint32_t *)offsets)[c];
            if (off != absent && run_len && s == run_shard && off == run_off + run_len) {
                run_len += (uint64_t)step;
                continue;
            }
            if (run_len)
                given += posix_fadvise(fds[run_shard], (off_t)run_off, (off_t)run_len, POSIX_FADV_WILLNEED) == 0;
            run_len = 0;
            if (off != absent)
                run_shard = s, run_off = off, run_len = (uint64_t)step;
        }
        last = c1 > last ? c1 : last;
    }
    if (run_len)
        given += posix_fadvise(fds[run_shard], (off_t)run_off, (off_t)run_len, POSIX_FADV_WILLNEED) == 0;
    return given;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", "lodestore decode kernel (used through ctypes)", -1, NULL};
PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }
