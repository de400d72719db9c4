/* The contract between lodestore's C libraries and their ctypes bindings: status codes and ABI versions,
 * shared by store/_decode.c and engine/_kernels.c. lodestore/_cabi.py mirrors these numbers for Python
 * (tests/engine/test_native.py checks that the two agree).
 *
 * An ABI version is bumped whenever a function's arguments or the meaning of its result change: the
 * bindings refuse a library built from other sources (calling a function with the wrong arguments would
 * crash the process, not raise).
 */
#ifndef LODESTORE_ABI_H
#define LODESTORE_ABI_H

#define LS_DECODE_ABI 6  /* store/_decode.c, bound by store/_native.py */
#define LS_KERNELS_ABI 5 /* engine/_kernels.c, bound by engine/_native.py */

/* What every ls_* function that can fail returns. */
#define LS_OK 0
#define LS_ERR_NOMEM (-1)     /* a scratch buffer could not be allocated */
#define LS_ERR_ARGS (-2)      /* sizes that disagree (a caller's mistake: the bindings check them first) */
#define LS_ERR_BAD_INDEX (-3) /* an index read from data (a centroid id, a span of ids) is out of range */

/* ls_read_chunks' results besides LS_OK (it also reports which run or chunk). */
#define LS_READ_SHORT 1   /* a run ends past the end of its file (the file is truncated) */
#define LS_READ_ERROR 2   /* the OS reported a read error (errno set) */
#define LS_READ_BAD_CRC 3 /* a chunk does not match its CRC32C */
#define LS_READ_NEED_SHARD 100 /* ls_read_rows, ls_advise_rows (negated): a shard is not open or loaded yet */

#endif
