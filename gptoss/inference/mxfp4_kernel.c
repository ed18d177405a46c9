/* gpt-oss's experts computed straight from their MXFP4 bytes, on a CPU: no bf16 copy of an expert.
 *
 * Decoding one token reads, per layer, the k experts it is routed to; those are 4.25 bits per
 * weight in MXFP4 (gptoss/checkpoints/mxfp4.py), and decoding them to bf16 first, in PyTorch,
 * writes and re-reads 4x the bytes. Here each weight row is read once, as stored, and turned into
 * bf16 values in registers:
 *
 *   - a block of 32 values is 16 bytes of E2M1 codes (low nibble first) and one E8M0 scale byte;
 *   - two blocks (32 bytes) are widened to 32 16-bit lanes, one byte each; a 16-entry table lookup
 *     (vpermw, _mm512_permutexvar_epi16, on the low 5 bits: the table is stored twice so that the
 *     high nibble's low bit does not matter) gives the 32 values of the low nibbles (the even
 *     columns), and the same lookup of the lanes shifted right by 4 the odd columns;
 *   - vdpbf16ps (_mm512_dpbf16_ps) multiplies them, in pairs, by the matching input values and
 *     sums in fp32: lanes 0-7 of the result hold the first block, lanes 8-15 the second, so one
 *     multiply-add per pair of blocks applies the scales 2^(s-127) (made from the scale bytes by a
 *     shift into the fp32 exponent) and accumulates.
 *
 * The inputs are laid out once per call to match ("split" vectors, split_vector below): per pair
 * of blocks, the 32 even-column values, then the 32 odd-column ones, in bf16. An fp32 input is
 * split into `terms` bf16 vectors x = hi + mid + lo (terms=3 keeps all 24 bits): the weights being
 * exact in bf16, the products are exact and the result is as accurate as an fp32 product (the
 * tests check 1e-5 against dequantise-then-matmul in fp32); terms=1 is bf16 input.
 *
 * mxfp4_experts is a whole MoE layer after its router: the tokens are grouped by expert (a counting
 * sort), each expert's rows are read once for all its tokens (up to TOKEN_TILE at a time share
 * each decoded pair of blocks), and gate_up's interleaved rows (gate = even, linear = odd) give
 * one hidden unit per pair of rows, so the bias, clamps and SwiGLU are applied as the pair is
 * computed; then the down projection, the routing weights, and each token's sum over its k
 * experts. Work is split over output rows between OpenMP threads (as many as PyTorch uses).
 *
 * Without AVX512_BF16 (other CPUs, other compilers) the same functions run a portable scalar loop.
 * Built by gptoss/inference/mxfp4_kernel.py (-O3 -march=native -fopenmp).
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define MX_VECTOR 1
#endif

#define BLOCK 32       /* values per MXFP4 block, sharing one scale */
#define BLOCK_BYTES 16 /* two 4-bit codes per byte */
#define PAIR 64        /* values per pair of blocks: the unit of the inner loop and of split vectors */
#define TOKEN_TILE 8   /* vectors multiplied per decode of a row's pair of blocks */
#define ROW_ITEM 16    /* weight rows per unit of work handed to a thread */

const long mxfp4_layout_version = 1; /* checked by mxfp4_kernel.py */
const long mxfp4_vectorised =
#ifdef MX_VECTOR
    1;
#else
    0;
#endif

static inline uint16_t bf16_from_float(float f) { /* round to nearest even, as PyTorch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float float_from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load_value(const void *p, long i, int bf16) {
    return bf16 ? float_from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_value(void *p, long i, int bf16, float v) {
    if (bf16) ((uint16_t *)p)[i] = bf16_from_float(v);
    else ((float *)p)[i] = v;
}

static inline long pairs_of(long in_features) { return (in_features / BLOCK + 1) / 2; }

/* uint16 values in one split vector of `in_features` (all its terms) */
static inline long split_length(long in_features, int terms) { return terms * pairs_of(in_features) * PAIR; }

/* Where input value c goes in its term of a split vector: pair c/64, then the even columns of both
 * blocks (first block's 16, second's 16), then the odd ones. */
static inline long split_position(long c) {
    long block = c / BLOCK, within = c % BLOCK;
    return (block / 2) * PAIR + (within & 1) * 32 + (block & 1) * 16 + within / 2;
}

/* Put value v (input column c) into a split vector, as `terms` bf16 terms: hi, then what hi
 * misses, ... (each difference is exact in fp32). */
static inline void split_value(uint16_t *split, long term_stride, int terms, long c, float v) {
    long pos = split_position(c);
    for (int t = 0; t < terms; t++) {
        uint16_t h = bf16_from_float(v);
        split[t * term_stride + pos] = h;
        v -= float_from_bf16(h);
    }
}

/* x (in_features values, fp32 or bf16) -> its split vector (split_length values; a missing second
 * block of the last pair stays zero). */
static void split_vector(const void *x, int x_bf16, long in_features, int terms, uint16_t *split) {
    long term_stride = pairs_of(in_features) * PAIR;
    memset(split, 0, (size_t)split_length(in_features, terms) * sizeof(uint16_t));
    for (long c = 0; c < in_features; c++) split_value(split, term_stride, terms, c, load_value(x, c, x_bf16));
}

#ifdef MX_VECTOR
static const uint16_t FP4_BF16_TWICE[32] = {
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
    0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
    0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
};

/* out[i] = (row . vector i) for n split vectors x[i] (n, terms: compile-time constants after
 * inlining); the row is `groups` blocks and their scale bytes. */
static inline __attribute__((always_inline)) void row_dot_body(const uint8_t *blocks, const uint8_t *scales, long groups,
                                                              const uint16_t *const *x, long term_stride, float *out,
                                                              const int n, const int terms) {
    const __m512i table = _mm512_loadu_si512(FP4_BF16_TWICE);
    const __m512i lane_block = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512 smallest = _mm512_set1_ps(0x1p-127f); /* scale byte 0: a subnormal, not 0 */
    __m512 acc[TOKEN_TILE];
    for (int i = 0; i < n; i++) acc[i] = _mm512_setzero_ps();
    long pairs = (groups + 1) / 2;
    for (long first = 0; first < pairs; first += 8) { /* 8 pairs: the 16 scale bytes of one load */
        long blocks_here = groups - 2 * first < 16 ? groups - 2 * first : 16;
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << blocks_here) - 1), scales + 2 * first));
        __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(bytes, 23)); /* 2^(s - 127) for s in 1..254 */
        scale = _mm512_mask_mov_ps(scale, _mm512_cmpeq_epi32_mask(bytes, _mm512_setzero_si512()), smallest);
        long last = first + 8 < pairs ? first + 8 : pairs;
        for (long p = first; p < last; p++) {
            const uint8_t *b = blocks + p * 2 * BLOCK_BYTES;
            __m256i raw = 2 * p + 1 < groups ? _mm256_loadu_si256((const __m256i *)b) : _mm256_maskz_loadu_epi8(0xffff, b);
            __m512i codes = _mm512_cvtepu8_epi16(raw);
            __m512bh even = (__m512bh)_mm512_permutexvar_epi16(codes, table);
            __m512bh odd = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(codes, 4), table);
            __m512 s = _mm512_permutexvar_ps(_mm512_add_epi32(lane_block, _mm512_set1_epi32((int)(2 * (p - first)))), scale);
            for (int i = 0; i < n; i++) {
                __m512 d = _mm512_setzero_ps();
                for (int t = 0; t < terms; t++) {
                    const uint16_t *xp = x[i] + t * term_stride + p * PAIR;
                    d = _mm512_dpbf16_ps(d, even, (__m512bh)_mm512_loadu_si512(xp));
                    d = _mm512_dpbf16_ps(d, odd, (__m512bh)_mm512_loadu_si512(xp + 32));
                }
                acc[i] = _mm512_fmadd_ps(d, s, acc[i]);
            }
        }
    }
    for (int i = 0; i < n; i++) out[i] = _mm512_reduce_add_ps(acc[i]);
}

#define ROW_DOT_CASE(N, T) \
    case (N) * 4 + (T): row_dot_body(blocks, scales, groups, x, term_stride, out, N, T); return;

static void row_dot(const uint8_t *blocks, const uint8_t *scales, long groups, const uint16_t *const *x, int n,
                    long term_stride, int terms, float *out) {
    switch (n * 4 + terms) { /* n = 1 .. TOKEN_TILE, terms = 1 .. 3 */
        ROW_DOT_CASE(1, 1) ROW_DOT_CASE(2, 1) ROW_DOT_CASE(3, 1) ROW_DOT_CASE(4, 1)
        ROW_DOT_CASE(5, 1) ROW_DOT_CASE(6, 1) ROW_DOT_CASE(7, 1) ROW_DOT_CASE(8, 1)
        ROW_DOT_CASE(1, 2) ROW_DOT_CASE(2, 2) ROW_DOT_CASE(3, 2) ROW_DOT_CASE(4, 2)
        ROW_DOT_CASE(5, 2) ROW_DOT_CASE(6, 2) ROW_DOT_CASE(7, 2) ROW_DOT_CASE(8, 2)
        ROW_DOT_CASE(1, 3) ROW_DOT_CASE(2, 3) ROW_DOT_CASE(3, 3) ROW_DOT_CASE(4, 3)
        ROW_DOT_CASE(5, 3) ROW_DOT_CASE(6, 3) ROW_DOT_CASE(7, 3) ROW_DOT_CASE(8, 3)
    }
}
#else
static const float FP4_VALUES[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* The portable loop: the same split inputs (the sum of a value's terms), block by block. */
static void row_dot(const uint8_t *blocks, const uint8_t *scales, long groups, const uint16_t *const *x, int n,
                    long term_stride, int terms, float *out) {
    for (int i = 0; i < n; i++) {
        float acc = 0.0f;
        for (long g = 0; g < groups; g++) {
            float block_sum = 0.0f;
            for (long c = 0; c < BLOCK; c++) {
                uint8_t byte = blocks[g * BLOCK_BYTES + c / 2];
                float w = FP4_VALUES[c & 1 ? byte >> 4 : byte & 15];
                long pos = split_position(g * BLOCK + c);
                float v = 0.0f;
                for (int t = 0; t < terms; t++) v += float_from_bf16(x[i][t * term_stride + pos]);
                block_sum += w * v;
            }
            acc += block_sum * ldexpf(1.0f, (int)scales[g] - 127);
        }
        out[i] = acc;
    }
}
#endif

/* The bytes of scratch memory mxfp4_linear needs. */
long mxfp4_linear_scratch(long m, long in_features, int terms) {
    return m * split_length(in_features, terms) * (long)sizeof(uint16_t);
}

/* y (m, out_features) = x (m, in_features) @ W.T + bias, W (out_features, in_features) in MXFP4:
 * blocks (out_features, in_features/32, 16), scales (out_features, in_features/32); x, bias
 * (out_features, or NULL) and y fp32. terms: 1 (x rounded to bf16) to 3 (fp32-accurate). */
void mxfp4_linear(const float *x, long m, long in_features, const uint8_t *blocks, const uint8_t *scales,
                  long out_features, const float *bias, float *y, int terms, void *scratch, int threads) {
    long groups = in_features / BLOCK, stride = split_length(in_features, terms);
    uint16_t *split = (uint16_t *)scratch;
    long items = (out_features + ROW_ITEM - 1) / ROW_ITEM;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long r = 0; r < m; r++) split_vector(x + r * in_features, 0, in_features, terms, split + r * stride);
#pragma omp for schedule(static)
        for (long item = 0; item < items; item++) {
            long end = (item + 1) * ROW_ITEM < out_features ? (item + 1) * ROW_ITEM : out_features;
            for (long r0 = 0; r0 < m; r0 += TOKEN_TILE) {
                int n = m - r0 < TOKEN_TILE ? (int)(m - r0) : TOKEN_TILE;
                const uint16_t *xs[TOKEN_TILE];
                for (int i = 0; i < n; i++) xs[i] = split + (r0 + i) * stride;
                for (long o = item * ROW_ITEM; o < end; o++) {
                    float dots[TOKEN_TILE];
                    row_dot(blocks + o * groups * BLOCK_BYTES, scales + o * groups, groups, xs, n, stride / terms, terms, dots);
                    for (int i = 0; i < n; i++) y[(r0 + i) * out_features + o] = dots[i] + (bias ? bias[o] : 0.0f);
                }
            }
        }
    }
}

/* The scratch memory of mxfp4_experts, in bytes, and where each part starts. */
typedef struct {
    long order, starts, x_split, h_split, y, total;
} ExpertsScratch;

static ExpertsScratch experts_scratch(long n, long d_model, long d_ff, long experts, int k, int terms) {
    ExpertsScratch s;
    long a = n * k;
    s.order = 0;                                                        /* a longs: assignments by expert */
    s.starts = s.order + a * 8;                                         /* experts + 1 longs */
    s.x_split = s.starts + (experts + 1) * 8;                           /* n split tokens */
    s.h_split = s.x_split + n * split_length(d_model, terms) * 2;       /* a split hidden vectors */
    s.y = s.h_split + a * split_length(d_ff, terms) * 2;                /* a x d_model fp32 */
    s.y = (s.y + 63) / 64 * 64;
    s.total = s.y + a * d_model * 4;
    return s;
}

long mxfp4_experts_scratch(long n, long d_model, long d_ff, long experts, int k, int terms) {
    return experts_scratch(n, d_model, d_ff, experts, k, terms).total + 64; /* + alignment slack */
}

/* One MoE layer after its router, for n tokens x (n, d_model), fp32 or bf16 (x_bf16), each routed
 * to k experts: top_experts (n, k) int64 and top_weights (n, k) fp32. Expert e's matrices, (out, in)
 * packed along `in`: gate_up (E, 2*d_ff, d_model/32, 16) blocks and (E, 2*d_ff, d_model/32) scales,
 * rows interleaved gate, linear, gate, ...; down (E, d_model, d_ff/32, 16) and (E, d_model, d_ff/32);
 * biases (E, 2*d_ff) and (E, d_model) in x's dtype. For each token and expert,
 *   gate, linear = x @ gate_up.T + bias (the even and odd rows)
 *   hidden = min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(linear, -limit, limit) + 1)
 *   out += weight * (hidden @ down.T + bias)
 * into out (n, d_model) in x's dtype. Returns 0, or -1 (nothing written) for an expert index
 * outside 0..E-1. */
int mxfp4_experts(const void *x, int x_bf16, long n, long d_model, long d_ff, long num_experts, int k,
                  const int64_t *top_experts, const float *top_weights,
                  const uint8_t *gu_blocks, const uint8_t *gu_scales, const void *gu_bias,
                  const uint8_t *dn_blocks, const uint8_t *dn_scales, const void *dn_bias,
                  float limit, float alpha, int terms, void *out, void *scratch, int threads) {
    ExpertsScratch s = experts_scratch(n, d_model, d_ff, num_experts, k, terms);
    char *base = (char *)(((uintptr_t)scratch + 63) / 64 * 64);
    long *order = (long *)(base + s.order), *starts = (long *)(base + s.starts);
    uint16_t *x_split = (uint16_t *)(base + s.x_split), *h_split = (uint16_t *)(base + s.h_split);
    float *y = (float *)(base + s.y);
    long assignments = n * k, x_stride = split_length(d_model, terms), h_stride = split_length(d_ff, terms);

    /* counting sort of the assignments (token * k + j) by expert */
    memset(starts, 0, (size_t)(num_experts + 1) * sizeof(long));
    for (long a = 0; a < assignments; a++) {
        if (top_experts[a] < 0 || top_experts[a] >= num_experts) return -1;
        starts[top_experts[a] + 1]++;
    }
    for (long e = 0; e < num_experts; e++) starts[e + 1] += starts[e];
    long active[num_experts > 0 ? num_experts : 1], num_active = 0;
    {
        long next[num_experts > 0 ? num_experts : 1];
        for (long e = 0; e < num_experts; e++) {
            next[e] = starts[e];
            if (starts[e + 1] > starts[e]) active[num_active++] = e;
        }
        for (long a = 0; a < assignments; a++) order[next[top_experts[a]]++] = a;
    }

    /* hidden values are written one by one: the padding of an odd number of blocks must be zero */
    if ((d_ff / BLOCK) % 2) memset(h_split, 0, (size_t)(assignments * h_stride) * sizeof(uint16_t));

    long gu_groups = d_model / BLOCK, dn_groups = d_ff / BLOCK;
    long gu_items_per_expert = (d_ff + ROW_ITEM / 2 - 1) / (ROW_ITEM / 2); /* ROW_ITEM rows = ROW_ITEM/2 hidden units */
    long dn_items_per_expert = (d_model + ROW_ITEM - 1) / ROW_ITEM;
    long gu_items = num_active * gu_items_per_expert, dn_items = num_active * dn_items_per_expert;
    /* several tokens: experts of different loads, so small units handed out as threads free up;
     * one token: equal shares, each thread a contiguous run of rows */
    long gu_chunk = n > 1 || threads < 1 ? 1 : (gu_items + threads - 1) / threads;
    long dn_chunk = n > 1 || threads < 1 ? 1 : (dn_items + threads - 1) / threads;
    if (gu_chunk < 1) gu_chunk = 1;
    if (dn_chunk < 1) dn_chunk = 1;

#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (long t = 0; t < n; t++) split_vector((const char *)x + t * d_model * (x_bf16 ? 2 : 4), x_bf16, d_model, terms, x_split + t * x_stride);

        /* gate_up, bias, clamps, SwiGLU -> each assignment's split hidden vector */
#pragma omp for schedule(dynamic, gu_chunk)
        for (long item = 0; item < gu_items; item++) {
            long e = active[item / gu_items_per_expert];
            long unit0 = (item % gu_items_per_expert) * (ROW_ITEM / 2);
            long unit1 = unit0 + ROW_ITEM / 2 < d_ff ? unit0 + ROW_ITEM / 2 : d_ff;
            const uint8_t *eb = gu_blocks + e * 2 * d_ff * gu_groups * BLOCK_BYTES;
            const uint8_t *es = gu_scales + e * 2 * d_ff * gu_groups;
            for (long i0 = starts[e]; i0 < starts[e + 1]; i0 += TOKEN_TILE) {
                int cnt = starts[e + 1] - i0 < TOKEN_TILE ? (int)(starts[e + 1] - i0) : TOKEN_TILE;
                const uint16_t *xs[TOKEN_TILE];
                for (int i = 0; i < cnt; i++) xs[i] = x_split + (order[i0 + i] / k) * x_stride;
                for (long u = unit0; u < unit1; u++) {
                    float gate[TOKEN_TILE], linear[TOKEN_TILE];
                    row_dot(eb + 2 * u * gu_groups * BLOCK_BYTES, es + 2 * u * gu_groups, gu_groups, xs, cnt, x_stride / terms, terms, gate);
                    row_dot(eb + (2 * u + 1) * gu_groups * BLOCK_BYTES, es + (2 * u + 1) * gu_groups, gu_groups, xs, cnt, x_stride / terms, terms, linear);
                    float gate_bias = load_value(gu_bias, e * 2 * d_ff + 2 * u, x_bf16);
                    float linear_bias = load_value(gu_bias, e * 2 * d_ff + 2 * u + 1, x_bf16);
                    for (int i = 0; i < cnt; i++) {
                        float g = fminf(gate[i] + gate_bias, limit);
                        float l = fmaxf(fminf(linear[i] + linear_bias, limit), -limit);
                        float h = g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
                        split_value(h_split + order[i0 + i] * h_stride, h_stride / terms, terms, u, h);
                    }
                }
            }
        }

        /* down, bias, routing weight -> y (one row per assignment) */
#pragma omp for schedule(dynamic, dn_chunk)
        for (long item = 0; item < dn_items; item++) {
            long e = active[item / dn_items_per_expert];
            long row0 = (item % dn_items_per_expert) * ROW_ITEM;
            long row1 = row0 + ROW_ITEM < d_model ? row0 + ROW_ITEM : d_model;
            const uint8_t *eb = dn_blocks + e * d_model * dn_groups * BLOCK_BYTES;
            const uint8_t *es = dn_scales + e * d_model * dn_groups;
            for (long i0 = starts[e]; i0 < starts[e + 1]; i0 += TOKEN_TILE) {
                int cnt = starts[e + 1] - i0 < TOKEN_TILE ? (int)(starts[e + 1] - i0) : TOKEN_TILE;
                const uint16_t *hs[TOKEN_TILE];
                for (int i = 0; i < cnt; i++) hs[i] = h_split + order[i0 + i] * h_stride;
                for (long r = row0; r < row1; r++) {
                    float dots[TOKEN_TILE];
                    row_dot(eb + r * dn_groups * BLOCK_BYTES, es + r * dn_groups, dn_groups, hs, cnt, h_stride / terms, terms, dots);
                    float bias = load_value(dn_bias, e * d_model + r, x_bf16);
                    for (int i = 0; i < cnt; i++) y[order[i0 + i] * d_model + r] = top_weights[order[i0 + i]] * (dots[i] + bias);
                }
            }
        }

        /* each token's sum over its k experts, in the order the router ranked them */
#pragma omp for schedule(static)
        for (long t = 0; t < n; t++)
            for (long c = 0; c < d_model; c++) {
                float sum = 0.0f;
                for (int j = 0; j < k; j++) sum += y[(t * k + j) * d_model + c];
                store_value(out, t * d_model + c, x_bf16, sum);
            }
    }
    return 0;
}
