/* y = x @ w.T + bias in fp32 on a CPU, from a copy of w laid out for reading in one stream.
 *
 * Decoding one token multiplies one row of activations by every weight matrix, so a step takes as
 * long as reading the weights from memory. BLAS's matrix-vector product reads a row-major w well below
 * the memory's speed; this layout lets each thread read its share of w front to back in one
 * contiguous run, close to the speed of a plain sum over the same bytes (docs/inference.md has
 * the figures).
 *
 * The layout, "tiles" (made by gptoss/inference/cpu_kernel.py): the rows of w (the output features) in
 * groups of TILE; tile t holds its TILE rows column by column, tile[k * TILE + j] =
 * w[t * TILE + j][k], the last tile's missing rows zero. One pass over a tile gives its TILE
 * outputs for X_ROWS rows of x at once: for each k, one contiguous vector of TILE weights times
 * x[r][k], for each of the X_ROWS rows. Several rows of x (a batch, or a prompt) share each read of
 * the tile, and the tile (TILE x in_features weights, at most a few hundred KB) stays in cache
 * across the groups of X_ROWS rows.
 *
 * bf16 and int8 weights (linear_bf16, linear_int8, below) are read where they lie, row-major as
 * PyTorch holds them: each thread's share of the output features is one contiguous run of rows, so
 * one stream, and each output is a dot product along its row (no copy of the weight is made).
 *
 * attend_one_query (at the end) is a decoding step's attention over the KV cache, one call per layer.
 *
 * Built by gptoss/inference/cpu_kernel.py with the system's C compiler (-O3 -march=native -fopenmp): the
 * `omp simd` loops become vector instructions (with GCC on an AVX-512 CPU, 512-bit ones, which
 * it would otherwise avoid), and OpenMP splits the tiles between as many threads as PyTorch uses.
 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define INT8_INTRINSICS /* AVX-512 with byte and 16-bit masked loads */
#if defined(__AVX512BF16__)
#define BF16_INTRINSICS /* and the bf16 dot products */
#endif
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


/* ------------------------------------------------------------------ bf16 and int8, row-major
 * y[i][j] = sum_k w[j][k] x[i][k] (then int8's per-row scale, and the bias), as dot products
 * along the rows. For a few rows of x (decoding), one row of w at a time, front to back, so that
 * a thread's reads are one stream (interleaving several rows of w, each only a few KB long, keeps
 * restarting the hardware prefetcher, which is slower at batch 1), times up to X_ROWS rows of
 * x, which share each read of w; for one row of x, CHAINS independent running sums along the row,
 * so that several multiply-adds are in flight. For a prompt (at least PROMPT_ROWS rows of x),
 * which is bound by arithmetic, not memory, W_ROWS rows of w times X_ROWS rows of x at once:
 * each load then serves 4 multiply-adds rather than ~1. The rows of x, at most X_CHUNK at a time
 * (so that they stay in the caches), are read again for every row of w. */

#define W_ROWS 4
#define PROMPT_ROWS 16
#define LANES 16   /* fp32 lanes of a 512-bit vector */
#define X_CHUNK 64 /* rows of x per pass over w */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch does */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* out[b] = sum_k w[k] x[b][k] for b < nx (x's rows in_features apart). Inlined with a constant
 * nx, the loops unroll and the X_ROWS x CHAINS sums stay in vector registers. */
#if defined(BF16_INTRINSICS)
/* The CPU's bf16 dot products: _mm512_dpbf16_ps adds to each of 16 fp32 sums the products of two
 * pairs of bf16 values (exact in fp32): 32 columns per instruction; the last in_features % 32
 * columns are loaded under a mask (zeros beyond). */
static inline __attribute__((always_inline)) void dot_bf16(const uint16_t *w, int nw, const uint16_t *x, int nx,
                                                           long in_features, float out[W_ROWS][X_ROWS]) {
    const int chains = nw * nx == 1 ? CHAINS : 1; /* several rows: already independent sums */
    __m512 sums[W_ROWS][X_ROWS][CHAINS];
    for (int a = 0; a < nw; a++)
        for (int b = 0; b < nx; b++)
            for (int c = 0; c < chains; c++)
                sums[a][b][c] = _mm512_setzero_ps();
    long k = 0;
    for (; k + 32 * chains <= in_features; k += 32 * chains)
        for (int c = 0; c < chains; c++) {
            __m512i x_b[X_ROWS];
            for (int b = 0; b < nx; b++)
                x_b[b] = _mm512_loadu_si512(x + b * in_features + k + 32 * c);
            for (int a = 0; a < nw; a++) {
                __m512i w_a = _mm512_loadu_si512(w + a * in_features + k + 32 * c);
                for (int b = 0; b < nx; b++)
                    sums[a][b][c] = _mm512_dpbf16_ps(sums[a][b][c], (__m512bh)w_a, (__m512bh)x_b[b]);
            }
        }
    for (; k < in_features; k += 32) {
        __mmask32 mask = in_features - k >= 32 ? 0xffffffffu : (1u << (in_features - k)) - 1u;
        __m512i x_b[X_ROWS];
        for (int b = 0; b < nx; b++)
            x_b[b] = _mm512_maskz_loadu_epi16(mask, x + b * in_features + k);
        for (int a = 0; a < nw; a++) {
            __m512i w_a = _mm512_maskz_loadu_epi16(mask, w + a * in_features + k);
            for (int b = 0; b < nx; b++)
                sums[a][b][0] = _mm512_dpbf16_ps(sums[a][b][0], (__m512bh)w_a, (__m512bh)x_b[b]);
        }
    }
    for (int a = 0; a < nw; a++)
        for (int b = 0; b < nx; b++) {
            for (int c = 1; c < chains; c++)
                sums[a][b][0] = _mm512_add_ps(sums[a][b][0], sums[a][b][c]);
            out[a][b] = _mm512_reduce_add_ps(sums[a][b][0]);
        }
}
#endif

#if defined(INT8_INTRINSICS)
/* int8 weights widened to fp32 in registers (16 per instruction), times fp32 x. */
static inline __attribute__((always_inline)) void dot_int8(const int8_t *w, int nw, const float *x, int nx,
                                                           long in_features, float out[W_ROWS][X_ROWS]) {
    const int chains = nw * nx == 1 ? CHAINS : 1; /* several rows: already independent sums */
    __m512 sums[W_ROWS][X_ROWS][CHAINS];
    for (int a = 0; a < nw; a++)
        for (int b = 0; b < nx; b++)
            for (int c = 0; c < chains; c++)
                sums[a][b][c] = _mm512_setzero_ps();
    long k = 0;
    for (; k + LANES * chains <= in_features; k += LANES * chains)
        for (int c = 0; c < chains; c++) {
            __m512 x_b[X_ROWS];
            for (int b = 0; b < nx; b++)
                x_b[b] = _mm512_loadu_ps(x + b * in_features + k + LANES * c);
            for (int a = 0; a < nw; a++) {
                __m512 w_a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + a * in_features + k + LANES * c))));
                for (int b = 0; b < nx; b++)
                    sums[a][b][c] = _mm512_fmadd_ps(w_a, x_b[b], sums[a][b][c]);
            }
        }
    for (; k < in_features; k += LANES) {
        __mmask16 mask = in_features - k >= LANES ? 0xffffu : (__mmask16)((1u << (in_features - k)) - 1u);
        __m512 x_b[X_ROWS];
        for (int b = 0; b < nx; b++)
            x_b[b] = _mm512_maskz_loadu_ps(mask, x + b * in_features + k);
        for (int a = 0; a < nw; a++) {
            __m512 w_a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, w + a * in_features + k)));
            for (int b = 0; b < nx; b++)
                sums[a][b][0] = _mm512_fmadd_ps(w_a, x_b[b], sums[a][b][0]);
        }
    }
    for (int a = 0; a < nw; a++)
        for (int b = 0; b < nx; b++) {
            for (int c = 1; c < chains; c++)
                sums[a][b][0] = _mm512_add_ps(sums[a][b][0], sums[a][b][c]);
            out[a][b] = _mm512_reduce_add_ps(sums[a][b][0]);
        }
}
#endif

/* The portable loops (any CPU; GCC vectorises the `omp simd` ones): LANES running sums per row
 * of x, added up at the end. */
#define PORTABLE_DOT(name, w_type, x_type, to_f32_w, to_f32_x)                                         \
    static inline __attribute__((always_inline)) void name(const w_type *w, int nw, const x_type *x, int nx, \
                                                           long in_features, float out[W_ROWS][X_ROWS]) { \
        float sums[W_ROWS][X_ROWS][LANES] = {{{0}}};                                                   \
        long k = 0;                                                                                    \
        for (; k + LANES <= in_features; k += LANES)                                                   \
            for (int a = 0; a < nw; a++) {                                                             \
                float w_a[LANES];                                                                      \
                _Pragma("omp simd") for (int l = 0; l < LANES; l++) w_a[l] = to_f32_w(w[a * in_features + k + l]); \
                for (int b = 0; b < nx; b++)                                                           \
                    _Pragma("omp simd") for (int l = 0; l < LANES; l++)                               \
                        sums[a][b][l] += w_a[l] * to_f32_x(x[b * in_features + k + l]);               \
            }                                                                                          \
        for (int a = 0; a < nw; a++)                                                                   \
            for (int b = 0; b < nx; b++) {                                                             \
                float total = 0.0f;                                                                    \
                for (int l = 0; l < LANES; l++)                                                        \
                    total += sums[a][b][l];                                                            \
                for (long r = k; r < in_features; r++) /* the last in_features % LANES columns */      \
                    total += to_f32_w(w[a * in_features + r]) * to_f32_x(x[b * in_features + r]);    \
                out[a][b] = total;                                                                     \
            }                                                                                          \
    }

#define AS_FLOAT(v) ((float)(v))
#if !defined(BF16_INTRINSICS)
PORTABLE_DOT(dot_bf16, uint16_t, uint16_t, bf16_to_f32, bf16_to_f32)
#endif
#if !defined(INT8_INTRINSICS)
PORTABLE_DOT(dot_int8, int8_t, float, AS_FLOAT, AS_FLOAT)
#endif

/* x (m, in_features) and w (out_features, in_features), row-major -> y (m, out_features); the
 * statement `store` writes y[i + b][j + a] from out[a][b]. schedule(static) hands each thread one
 * contiguous run of w's rows, the same for every chunk of x. The blocks take constant sizes (the
 * sums stay in registers): rows of w one by one, or W_ROWS at a time for a prompt; rows of x
 * X_ROWS at a time, the rest one by one. */
#define ROW_MAJOR_LINEAR(dot, x, m, w, in_features, out_features, threads, store)                     \
    _Pragma("omp parallel num_threads(threads)")                                                       \
    for (long chunk = 0; chunk < m; chunk += X_CHUNK) {                                                \
        long chunk_end = chunk + X_CHUNK < m ? chunk + X_CHUNK : m;                                    \
        int w_rows = m >= PROMPT_ROWS ? W_ROWS : 1;                                                    \
        long blocks = (out_features + w_rows - 1) / w_rows;                                            \
        _Pragma("omp for schedule(static)")                                                            \
        for (long block = 0; block < blocks; block++) {                                                \
            long j = block * w_rows;                                                                   \
            int nw = out_features - j < w_rows ? (int)(out_features - j) : w_rows;                     \
            for (long i = chunk; i < chunk_end; i += X_ROWS) {                                         \
                int nx = chunk_end - i < X_ROWS ? (int)(chunk_end - i) : X_ROWS;                       \
                float out[W_ROWS][X_ROWS];                                                             \
                if (nw == W_ROWS && nx == X_ROWS)                                                      \
                    dot(w + j * in_features, W_ROWS, x + i * in_features, X_ROWS, in_features, out);   \
                else if (nw == 1 && nx == X_ROWS)                                                      \
                    dot(w + j * in_features, 1, x + i * in_features, X_ROWS, in_features, out);        \
                else                                                                                   \
                    for (int a = 0; a < nw; a++)                                                       \
                        for (int b = 0; b < nx; b++) {                                                 \
                            float one[W_ROWS][X_ROWS];                                                 \
                            dot(w + (j + a) * in_features, 1, x + (i + b) * in_features, 1, in_features, one); \
                            out[a][b] = one[0][0];                                                     \
                        }                                                                              \
                for (int a = 0; a < nw; a++)                                                           \
                    for (int b = 0; b < nx; b++)                                                       \
                        store;                                                                         \
            }                                                                                          \
        }                                                                                              \
    }

/* bf16: x (m, in_features), w (out_features, in_features), bias (out_features) or NULL, y (m,
 * out_features), all bf16 (raw uint16); products exact, sums in fp32, y rounded to bf16 once. */
void linear_bf16(const uint16_t *x, long m, const uint16_t *w, const uint16_t *bias, uint16_t *y,
                 long out_features, long in_features, int threads) {
    ROW_MAJOR_LINEAR(dot_bf16, x, m, w, in_features, out_features, threads,
                     y[(i + b) * out_features + j + a] = f32_to_bf16(out[a][b] + (bias ? bf16_to_f32(bias[j + a]) : 0.0f)));
}

/* int8 weights, one fp32 scale per row (w_real[j][k] = scale[j] * w[j][k]): x (m, in_features),
 * fp32; bias (out_features) fp32 or NULL -> y (m, out_features) fp32. */
void linear_int8(const float *x, long m, const int8_t *w, const float *scale, const float *bias, float *y,
                 long out_features, long in_features, int threads) {
    ROW_MAJOR_LINEAR(dot_int8, x, m, w, in_features, out_features, threads,
                     y[(i + b) * out_features + j + a] = scale[j + a] * out[a][b] + (bias ? bias[j + a] : 0.0f));
}

/* Attention of one query per sequence (a decoding step) over the keys and values so far, with
 * grouped-query heads and optional sinks, in fp32:
 *   q (B, H, hs), contiguous; k and v (B, Hkv, S, hs) at the strides given in elements (the last
 *   dimension contiguous): a KV cache read where it lies, query head h using k/v head
 *   h / (H / Hkv), so no head is repeated; visible (B, S) bytes (0: masked) or NULL (every key);
 *   sinks (H) fp32 or NULL: a logit per head that joins the softmax's denominator but has no value;
 *   y (B, H, hs) = sum_s p_s v_s, p = softmax over the visible s (and the sink) of scale * q.k_s.
 * One pass over the keys with a running maximum and sum (the "online" softmax: when the maximum
 * grows, what has been summed is rescaled), so scores are never stored; each (b, h) is a unit of
 * work for the threads. bf16: q, k, v and y are bf16 (raw uint16), else fp32. A query that sees no
 * key and has no sink gets zeros. */
void attend_one_query(const void *q, const void *k, const void *v, long batch_stride, long head_stride, long row_stride,
                      const uint8_t *visible, const float *sinks, void *y, long B, long H, long Hkv, long S, long hs,
                      float scale, int bf16, int threads) {
    long group = H / Hkv;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        long b = bh / H, h = bh % H;
        long base = b * batch_stride + (h / group) * head_stride;
        float query[hs], acc[hs];
        for (long d = 0; d < hs; d++) {
            query[d] = scale * (bf16 ? bf16_to_f32(((const uint16_t *)q)[bh * hs + d]) : ((const float *)q)[bh * hs + d]);
            acc[d] = 0.0f;
        }
        float running_max = -INFINITY, running_sum = 0.0f;
        for (long s = 0; s < S; s++) {
            if (visible && !visible[b * S + s]) continue;
            long at = base + s * row_stride;
            float score = 0.0f;
            if (bf16) {
                const uint16_t *key = (const uint16_t *)k + at;
#pragma omp simd reduction(+ : score)
                for (long d = 0; d < hs; d++) score += query[d] * bf16_to_f32(key[d]);
            } else {
                const float *key = (const float *)k + at;
#pragma omp simd reduction(+ : score)
                for (long d = 0; d < hs; d++) score += query[d] * key[d];
            }
            if (score > running_max) { /* rescale what has been summed to the new maximum */
                float shrink = expf(running_max - score);
                running_sum *= shrink;
                for (long d = 0; d < hs; d++) acc[d] *= shrink;
                running_max = score;
            }
            float p = expf(score - running_max);
            running_sum += p;
            if (bf16) {
                const uint16_t *value = (const uint16_t *)v + at;
#pragma omp simd
                for (long d = 0; d < hs; d++) acc[d] += p * bf16_to_f32(value[d]);
            } else {
                const float *value = (const float *)v + at;
#pragma omp simd
                for (long d = 0; d < hs; d++) acc[d] += p * value[d];
            }
        }
        if (sinks) { /* the sink's term, at a maximum that covers it too */
            float top = sinks[h] > running_max ? sinks[h] : running_max;
            float shrink = expf(running_max - top);
            running_sum = running_sum * shrink + expf(sinks[h] - top);
            for (long d = 0; d < hs; d++) acc[d] *= shrink;
        }
        float inverse = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
        for (long d = 0; d < hs; d++) {
            float out = acc[d] * inverse;
            if (bf16) ((uint16_t *)y)[bh * hs + d] = f32_to_bf16(out);
            else ((float *)y)[bh * hs + d] = out;
        }
    }
}
