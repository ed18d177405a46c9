/* y = x @ w.T + bias in fp32 on a CPU, from a copy of w laid out for reading in one stream.
 *
 * Decoding one token multiplies one row of activations by every weight matrix, so a step takes as
 * long as reading the weights from memory. BLAS's matrix-vector product reads a row-major w at
 * ~80% of the memory's speed here; this layout lets each thread read its share of w front to
 * back in one contiguous run, at 86-100% of the speed of a plain sum over the same bytes
 * (docs/inference.md).
 *
 * The layout, "tiles" (made by gptoss/inference/cpu_kernel.py): the rows of w (the output features) in
 * groups of TILE; tile t holds its TILE rows column by column, tile[k * TILE + j] =
 * w[t * TILE + j][k], the last tile's missing rows zero. One pass over a tile gives its TILE
 * outputs for X_ROWS rows of x at once: for each k, one contiguous vector of TILE weights times
 * x[r][k], for each of the X_ROWS rows. Several rows of x (a batch, or a prompt) share each read of
 * the tile, and the tile (TILE x in_features weights, at most a few hundred KB) stays in cache
 * across the groups of X_ROWS rows.
 *
 * fp32 only: for bf16 weights, converting each to fp32 makes this loop slower than oneDNN's bf16
 * dot products as soon as x has several rows, so InferenceLinear leaves bf16 to oneDNN.
 *
 * Built by gptoss/inference/cpu_kernel.py with the system's C compiler (-O3 -march=native -fopenmp): the
 * `omp simd` loops become vector instructions (with GCC on an AVX-512 CPU, 512-bit ones, which
 * it would otherwise avoid), and OpenMP splits the tiles between as many threads as PyTorch uses.
 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

#define TILE 16  /* output features per tile: one 512-bit vector of fp32 */
#define X_ROWS 4 /* rows of x per pass over a tile, when there are that many */
#define CHAINS 4 /* for a single row of x: independent running sums, so that several multiply-adds
                    are in flight at once rather than each waiting for the last (X_ROWS rows
                    already give X_ROWS independent sums) */

const long tile_outputs = TILE; /* read by cpu_kernel.py, which lays out the tiles */

/* The TILE outputs of one tile (output features first .. first + width - 1) for X_ROWS rows of x,
 * into y's rows (y_stride floats apart); the X_ROWS x TILE sums stay in vector registers. */
static inline void tile_times_x_rows(const float *x, const float *tile, const float *bias, float *y,
                                   long y_stride, long in_features, long first, long width) {
    float sums[X_ROWS][TILE] = {{0}};
    for (long k = 0; k < in_features; k++)
        for (long r = 0; r < X_ROWS; r++) {
            float x_rk = x[r * in_features + k];
#pragma omp simd
            for (long j = 0; j < TILE; j++)
                sums[r][j] += tile[k * TILE + j] * x_rk;
        }
    for (long r = 0; r < X_ROWS; r++)
        for (long j = 0; j < width; j++)
            y[r * y_stride + first + j] = sums[r][j] + (bias ? bias[first + j] : 0.0f);
}

/* The same for one row of x (decoding at batch 1 is all this): CHAINS sums, each over every
 * CHAINS-th k, added up at the end. */
static inline void tile_times_one_x_row(const float *x, const float *tile, const float *bias, float *y,
                                  long in_features, long first, long width) {
    float sums[CHAINS][TILE] = {{0}};
    long k = 0;
    for (; k + CHAINS <= in_features; k += CHAINS)
        for (long q = 0; q < CHAINS; q++) {
            float x_k = x[k + q];
#pragma omp simd
            for (long j = 0; j < TILE; j++)
                sums[q][j] += tile[(k + q) * TILE + j] * x_k;
        }
    for (; k < in_features; k++) /* the last in_features % CHAINS columns, if any */
        for (long j = 0; j < TILE; j++)
            sums[0][j] += tile[k * TILE + j] * x[k];
    for (long j = 0; j < width; j++) {
        float total = 0.0f;
        for (long q = 0; q < CHAINS; q++)
            total += sums[q][j];
        y[first + j] = total + (bias ? bias[first + j] : 0.0f);
    }
}

/* x (m, in_features), row-major; the tiles of w (out_features, in_features); bias (out_features)
 * or NULL -> y (m, out_features), row-major; on `threads` threads (torch.get_num_threads()).
 * schedule(static) gives each thread one contiguous run of tiles: its one stream of memory. Each
 * tile meets every row of x: X_ROWS rows at a time, then the rows left over one by one. */
void linear_f32(const float *x, long m, const float *tiles, const float *bias, float *y,
                long out_features, long in_features, int threads) {
    long count = (out_features + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long t = 0; t < count; t++) {
        const float *tile = tiles + t * in_features * TILE;
        long first = t * TILE;
        long width = out_features - first < TILE ? out_features - first : TILE; /* the last tile's real rows */
        long i = 0;
        for (; i + X_ROWS <= m; i += X_ROWS)
            tile_times_x_rows(x + i * in_features, tile, bias, y + i * out_features, out_features, in_features, first, width);
        for (; i < m; i++)
            tile_times_one_x_row(x + i * in_features, tile, bias, y + i * out_features, in_features, first, width);
    }
}
