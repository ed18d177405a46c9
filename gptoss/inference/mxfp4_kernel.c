/* gpt-oss's experts computed straight from their MXFP4 bytes, on a CPU: no bf16 copy of an expert.
 *
 * Decoding one token reads, per layer, the k experts it is routed to; those are 4.25 bits per
 * weight in MXFP4 (gptoss/checkpoints/mxfp4.py), and decoding them to bf16 first, in PyTorch,
 * writes and re-reads 4x the bytes. Here each weight row is read once, as stored, and turned into
 * bf16 values in registers:
 *
 *   - a block of 32 values is 16 bytes of E2M1 codes (low nibble first) and one E8M0 scale byte;
 *   - four blocks (64 bytes) are loaded at once; each 16-bit lane holds 4 codes, and each code
 *     is looked up, in turn (a shift apart), in a table of the 16 values' bf16 patterns
 *     (vpermw, _mm512_permutexvar_epi16): 128 weights in 4 vectors, 4 lookups and 3 shifts;
 *   - vdpbf16ps (_mm512_dpbf16_ps) multiplies them, in pairs, by the matching input values and
 *     sums in fp32: each 128-bit lane of the result holds one block's partial sums, so one
 *     multiply-add per 4 blocks applies the scales 2^(s-127) (made from the scale bytes by a
 *     shift into the fp32 exponent) and accumulates.
 *
 * The inputs are laid out once per call to match ("split" vectors, split_vector below): per 4
 * blocks, their values in the order in which the weights are decoded (split_position), in bf16.
 * An fp32 input is split into `terms` bf16 vectors x = hi + mid + lo (terms=3 keeps all 24 bits): the weights being
 * exact in bf16, the products are exact and the result is as accurate as an fp32 product (the
 * tests check 1e-5 against dequantise-then-matmul in fp32); terms=1 is bf16 input.
 *
 * mxfp4_experts is a whole MoE layer after its router: the tokens are grouped by expert (a counting
 * sort), each expert's rows are read once for all its tokens (up to TOKEN_TILE at a time share
 * each decoded unit of blocks), and gate_up's interleaved rows (gate = even, linear = odd) give
 * one hidden unit per pair of rows, so the bias, clamps and SwiGLU are applied as the pair is
 * computed; then the down projection, the routing weights, and each token's sum over its k
 * experts. Work is split over output rows between OpenMP threads (as many as PyTorch uses).
 *
 * With AVX2 and FMA but no AVX512_BF16 (e.g. AMD Zen 2/3), the split vectors are fp32 (one value
 * per column, the input rounded to `terms` bf16 terms, ordered by pairs of blocks) and a pair is
 * decoded with vpshufb (_mm256_shuffle_epi8) from a table of twice the E2M1 values (small integers,
 * exact in int8), widened to fp32 and multiplied with FMA, block by block, each block's sum then
 * scaled by half its scale. Without either (other CPUs, other compilers) the same functions run a
 * portable scalar loop on the fp32 split vectors. Built by gptoss/inference/mxfp4_kernel.py (-O3
 * -march=native -fopenmp).
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define MX_BF16_DOT 1 /* split vectors of bf16 terms, vdpbf16ps */
typedef uint16_t split_t;
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MX_AVX2 1 /* fp32 split vectors, vpshufb + FMA */
typedef float split_t;
#else
typedef float split_t; /* fp32 split vectors, scalar loop */
#endif

#define BLOCK 32       /* values per MXFP4 block, sharing one scale */
#define BLOCK_BYTES 16 /* two 4-bit codes per byte */
#ifdef MX_BF16_DOT
#define UNIT_BLOCKS 4  /* blocks per step of the inner loop, and per unit of a split vector: 64 code bytes */
#else
#define UNIT_BLOCKS 2  /* a pair of blocks: 32 code bytes */
#endif
#define UNIT (UNIT_BLOCKS * BLOCK) /* values per unit */
#define TOKEN_TILE 8   /* vectors multiplied per decode of a row's unit of blocks */
#define ROW_ITEM 16    /* weight rows per unit of work handed to a thread */

const long mxfp4_layout_version = 1; /* checked by mxfp4_kernel.py */
const char mxfp4_instructions[] = /* read by mxfp4_kernel.py: which of the three paths this build runs */
#if defined(MX_BF16_DOT)
    "avx512_bf16";
#elif defined(MX_AVX2)
    "avx2";
#else
    "portable";
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

static inline long units_of(long in_features) { return (in_features / BLOCK + UNIT_BLOCKS - 1) / UNIT_BLOCKS; }

/* split_t values in one term of a split vector of `in_features`, and in all its terms (fp32 split
 * vectors have one: the sum of the bf16 terms, exact in fp32) */
static inline long term_length(long in_features) { return units_of(in_features) * UNIT; }
#ifdef MX_BF16_DOT
static inline long split_length(long in_features, int terms) { return terms * term_length(in_features); }
#else
static inline long split_length(long in_features, int terms) { (void)terms; return term_length(in_features); }
#endif

/* Where input value c goes in its term of a split vector: in the order in which row_dot_body
 * decodes the weights of its unit (c / UNIT). AVX512_BF16, a unit of 4 blocks: 4 vectors of 32,
 * vector v the columns 4j + v of each block (j = 0..7; block q's 8 at 8q..8q+7). Otherwise a pair
 * of blocks: the even columns of both blocks (first block's 16, second's 16), then the odd ones. */
static inline long split_position(long c) {
    long block = c / BLOCK, within = c % BLOCK;
#ifdef MX_BF16_DOT
    return (block / 4) * UNIT + (within % 4) * 32 + (block % 4) * 8 + within / 4;
#else
    return (block / 2) * UNIT + (within & 1) * 32 + (block & 1) * 16 + within / 2;
#endif
}

/* Put value v (input column c) into a split vector, as `terms` bf16 terms: hi, then what hi
 * misses, ... (each difference is exact in fp32); an fp32 split vector holds their sum. */
static inline void split_value(split_t *split, long term_stride, int terms, long c, float v) {
    long pos = split_position(c);
#ifdef MX_BF16_DOT
    for (int t = 0; t < terms; t++) {
        uint16_t h = bf16_from_float(v);
        split[t * term_stride + pos] = h;
        v -= float_from_bf16(h);
    }
#else
    (void)term_stride;
    float sum = 0.0f;
    for (int t = 0; t < terms; t++) {
        float h = float_from_bf16(bf16_from_float(v));
        sum += h;
        v -= h;
    }
    split[pos] = sum;
#endif
}

/* x (in_features values, fp32 or bf16) -> its split vector (split_length values; the missing
 * blocks of a last, partial unit stay zero). */
static void split_vector(const void *x, int x_bf16, long in_features, int terms, split_t *split) {
    long term_stride = term_length(in_features);
    memset(split, 0, (size_t)split_length(in_features, terms) * sizeof(split_t));
    for (long c = 0; c < in_features; c++) split_value(split, term_stride, terms, c, load_value(x, c, x_bf16));
}

#if defined(MX_BF16_DOT)
/* The bf16 bit patterns of the 16 E2M1 values (0, 0.5, 1, 1.5, 2, 3, 4, 6, then negated), twice:
 * vpermw looks up the low 5 bits of each 16-bit index, so whatever the code above a lane's lowest
 * one holds (bit 4 is the next code's lowest bit), the 32-entry table gives that code's value. */
#define E2M1_BF16 0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0, \
                  0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0
static const uint16_t FP4_BF16_WORDS[32] = {E2M1_BF16, E2M1_BF16};

/* out[i] = (row . vector i) for n split vectors x[i] (n, terms: compile-time constants after
 * inlining); the row is `groups` blocks and their scale bytes.
 *
 * Per unit of 4 blocks (64 code bytes, one 512-bit load; 128-bit lane q is block q): 16-bit lane
 * j holds the codes of columns 4j..4j+3 of its block (low nibble first), so the unit shifted right
 * by 4v bits and looked up in the table gives the 32 bf16 weights of columns 4j + v; 4 such
 * vectors hold the unit's 128 (one lookup per 32 weights, where looking up the high and the low
 * byte of each with vpshufb and interleaving them takes three). vdpbf16ps multiplies each by the
 * input values laid out in the same order (split_position) and sums pairs in fp32, so fp32 lanes
 * 4q..4q+3 hold block q's partial sums, and one multiply-add by the blocks' scales 2^(s-127)
 * (made from the scale bytes by a shift into the fp32 exponent, each broadcast to its block's 4
 * lanes) accumulates. */
static inline __attribute__((always_inline)) void row_dot_body(const uint8_t *blocks, const uint8_t *scales, long groups,
                                                              const split_t *const *x, long term_stride, float *out,
                                                              const int n, const int terms) {
    const __m512i table = _mm512_loadu_si512(FP4_BF16_WORDS);
    const __m512 smallest = _mm512_set1_ps(0x1p-127f); /* scale byte 0: a subnormal, not 0 */
    const __m512i block_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc[TOKEN_TILE];
    for (int i = 0; i < n; i++) acc[i] = _mm512_setzero_ps();
    long units = (groups + UNIT_BLOCKS - 1) / UNIT_BLOCKS;
    for (long first = 0; first < units; first += 4) { /* 4 units: the 16 scale bytes of one load */
        long blocks_here = groups - UNIT_BLOCKS * first < 16 ? groups - UNIT_BLOCKS * first : 16;
        __m512i bytes = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << blocks_here) - 1), scales + UNIT_BLOCKS * first));
        __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(bytes, 23)); /* 2^(s - 127) for s in 1..254 */
        scale = _mm512_mask_mov_ps(scale, _mm512_cmpeq_epi32_mask(bytes, _mm512_setzero_si512()), smallest);
        long last = first + 4 < units ? first + 4 : units;
#pragma GCC unroll 4 /* then each unit's index into the 16 scales is a constant */
        for (long u = first; u < last; u++) {
            const uint8_t *b = blocks + u * UNIT_BLOCKS * BLOCK_BYTES;
            long blocks_in_unit = groups - UNIT_BLOCKS * u < UNIT_BLOCKS ? groups - UNIT_BLOCKS * u : UNIT_BLOCKS;
            __m512i raw = blocks_in_unit == UNIT_BLOCKS ? _mm512_loadu_si512(b)
                                                        : _mm512_maskz_loadu_epi8((1ull << (blocks_in_unit * BLOCK_BYTES)) - 1, b);
            __m512bh w[4] = { /* 16-bit lane j holds columns 4j..4j+3: nibble v is column 4j+v */
                (__m512bh)_mm512_permutexvar_epi16(raw, table),
                (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(raw, 4), table),
                (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(raw, 8), table),
                (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(raw, 12), table),
            };
            __m512 s = _mm512_permutexvar_ps(_mm512_add_epi32(block_of_lane, _mm512_set1_epi32((int)(UNIT_BLOCKS * (u - first)))), scale);
            for (int i = 0; i < n; i++) {
                __m512 d = _mm512_setzero_ps();
                for (int t = 0; t < terms; t++) {
                    const split_t *xp = x[i] + t * term_stride + u * UNIT;
                    for (int v = 0; v < 4; v++) d = _mm512_dpbf16_ps(d, w[v], (__m512bh)_mm512_loadu_si512(xp + 32 * v));
                }
                acc[i] = _mm512_fmadd_ps(d, s, acc[i]);
            }
        }
    }
    for (int i = 0; i < n; i++) out[i] = _mm512_reduce_add_ps(acc[i]);
}

#define ROW_DOT_CASE(N, T) \
    case (N) * 4 + (T): row_dot_body(blocks, scales, groups, x, term_stride, out, N, T); return;

static void row_dot(const uint8_t *blocks, const uint8_t *scales, long groups, const split_t *const *x, int n,
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
#elif defined(MX_AVX2)
/* Twice the 16 E2M1 values (integers, exact in int8), for vpshufb; each block's sum is then
 * scaled by half its scale. */
static const int8_t FP4_TWICE_INT8[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline float half_scale(uint8_t s) { /* 2^(s - 128): s - 1 in the exponent, or a subnormal */
    uint32_t u = s >= 2 ? (uint32_t)(s - 1) << 23 : 0x00200000u << s;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* out[i] = (row . x[i]) for n fp32 split vectors (n: a compile-time constant after inlining).
 * Per pair of blocks: 32 bytes -> the even columns' codes (low nibbles) and the odd ones' (high),
 * looked up in both 128-bit lanes at once (lane 0: the first block, lane 1: the second), widened
 * to 8 vectors of 8 fp32; four of them are the first block's, four the second's. */
static inline __attribute__((always_inline)) void row_dot_body(const uint8_t *blocks, const uint8_t *scales, long groups,
                                                              const split_t *const *x, float *out, const int n) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)FP4_TWICE_INT8));
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    __m256 acc_first[TOKEN_TILE], acc_second[TOKEN_TILE]; /* two chains: the blocks of a pair */
    for (int i = 0; i < n; i++) acc_first[i] = acc_second[i] = _mm256_setzero_ps();
    long pairs = (groups + 1) / 2;
    for (long p = 0; p < pairs; p++) {
        const uint8_t *b = blocks + p * 2 * BLOCK_BYTES;
        int both = 2 * p + 1 < groups;
        __m256i raw = both ? _mm256_loadu_si256((const __m256i *)b) : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)b));
        __m256i even = _mm256_shuffle_epi8(table, _mm256_and_si256(raw, nibble));
        __m256i odd = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble));
        __m128i e0 = _mm256_castsi256_si128(even), e1 = _mm256_extracti128_si256(even, 1);
        __m128i o0 = _mm256_castsi256_si128(odd), o1 = _mm256_extracti128_si256(odd, 1);
        __m256 w[8] = { /* split positions 0-7, 8-15 (first block, even), 16-31 (second, even), 32-63 (odd) */
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e0)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e0, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(e1)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(e1, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(o0)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(o0, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(o1)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(o1, 8))),
        };
        __m256 s_first = _mm256_set1_ps(half_scale(scales[2 * p]));
        __m256 s_second = _mm256_set1_ps(both ? half_scale(scales[2 * p + 1]) : 0.0f);
        for (int i = 0; i < n; i++) {
            const float *xp = x[i] + p * UNIT;
            __m256 d_first = _mm256_mul_ps(w[0], _mm256_loadu_ps(xp));
            d_first = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp + 8), d_first);
            d_first = _mm256_fmadd_ps(w[4], _mm256_loadu_ps(xp + 32), d_first);
            d_first = _mm256_fmadd_ps(w[5], _mm256_loadu_ps(xp + 40), d_first);
            __m256 d_second = _mm256_mul_ps(w[2], _mm256_loadu_ps(xp + 16));
            d_second = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp + 24), d_second);
            d_second = _mm256_fmadd_ps(w[6], _mm256_loadu_ps(xp + 48), d_second);
            d_second = _mm256_fmadd_ps(w[7], _mm256_loadu_ps(xp + 56), d_second);
            acc_first[i] = _mm256_fmadd_ps(d_first, s_first, acc_first[i]);
            acc_second[i] = _mm256_fmadd_ps(d_second, s_second, acc_second[i]);
        }
    }
    for (int i = 0; i < n; i++) {
        __m256 a = _mm256_add_ps(acc_first[i], acc_second[i]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        out[i] = _mm_cvtss_f32(h);
    }
}

#define ROW_DOT_CASE(N) \
    case N: row_dot_body(blocks, scales, groups, x, out, N); return;

static void row_dot(const uint8_t *blocks, const uint8_t *scales, long groups, const split_t *const *x, int n,
                    long term_stride, int terms, float *out) {
    (void)term_stride, (void)terms; /* fp32 split vectors: one term */
    switch (n) { /* 1 .. TOKEN_TILE */
        ROW_DOT_CASE(1) ROW_DOT_CASE(2) ROW_DOT_CASE(3) ROW_DOT_CASE(4)
        ROW_DOT_CASE(5) ROW_DOT_CASE(6) ROW_DOT_CASE(7) ROW_DOT_CASE(8)
    }
}
#else
static const float FP4_VALUES[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* The portable loop: the same fp32 split inputs, block by block. */
static void row_dot(const uint8_t *blocks, const uint8_t *scales, long groups, const split_t *const *x, int n,
                    long term_stride, int terms, float *out) {
    (void)term_stride, (void)terms;
    for (int i = 0; i < n; i++) {
        float acc = 0.0f;
        for (long g = 0; g < groups; g++) {
            float block_sum = 0.0f;
            for (long c = 0; c < BLOCK; c++) {
                uint8_t byte = blocks[g * BLOCK_BYTES + c / 2];
                block_sum += FP4_VALUES[c & 1 ? byte >> 4 : byte & 15] * x[i][split_position(g * BLOCK + c)];
            }
            acc += block_sum * ldexpf(1.0f, (int)scales[g] - 127);
        }
        out[i] = acc;
    }
}
#endif

/* The bytes of scratch memory mxfp4_linear needs. */
long mxfp4_linear_scratch(long m, long in_features, int terms) {
    return m * split_length(in_features, terms) * (long)sizeof(split_t);
}

/* y (m, out_features) = x (m, in_features) @ W.T + bias, W (out_features, in_features) in MXFP4:
 * blocks (out_features, in_features/32, 16), scales (out_features, in_features/32); x, bias
 * (out_features, or NULL) and y fp32. terms: 1 (x rounded to bf16) to 3 (fp32-accurate). */
void mxfp4_linear(const float *x, long m, long in_features, const uint8_t *blocks, const uint8_t *scales,
                  long out_features, const float *bias, float *y, int terms, void *scratch, int threads) {
    long groups = in_features / BLOCK, stride = split_length(in_features, terms);
    split_t *split = (split_t *)scratch;
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
                const split_t *xs[TOKEN_TILE];
                for (int i = 0; i < n; i++) xs[i] = split + (r0 + i) * stride;
                for (long o = item * ROW_ITEM; o < end; o++) {
                    float dots[TOKEN_TILE];
                    row_dot(blocks + o * groups * BLOCK_BYTES, scales + o * groups, groups, xs, n, term_length(in_features), terms, dots);
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
    s.h_split = s.x_split + n * split_length(d_model, terms) * (long)sizeof(split_t); /* a split hidden vectors */
    s.y = s.h_split + a * split_length(d_ff, terms) * (long)sizeof(split_t); /* a x d_model fp32 */
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
    split_t *x_split = (split_t *)(base + s.x_split), *h_split = (split_t *)(base + s.h_split);
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

    /* hidden values are written one by one: the padding of a last, partial unit must be zero */
    if ((d_ff / BLOCK) % UNIT_BLOCKS) memset(h_split, 0, (size_t)(assignments * h_stride) * sizeof(split_t));

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
                const split_t *xs[TOKEN_TILE];
                for (int i = 0; i < cnt; i++) xs[i] = x_split + (order[i0 + i] / k) * x_stride;
                for (long u = unit0; u < unit1; u++) {
                    float gate[TOKEN_TILE], linear[TOKEN_TILE];
                    row_dot(eb + 2 * u * gu_groups * BLOCK_BYTES, es + 2 * u * gu_groups, gu_groups, xs, cnt, term_length(d_model), terms, gate);
                    row_dot(eb + (2 * u + 1) * gu_groups * BLOCK_BYTES, es + (2 * u + 1) * gu_groups, gu_groups, xs, cnt, term_length(d_model), terms, linear);
                    float gate_bias = load_value(gu_bias, e * 2 * d_ff + 2 * u, x_bf16);
                    float linear_bias = load_value(gu_bias, e * 2 * d_ff + 2 * u + 1, x_bf16);
                    for (int i = 0; i < cnt; i++) {
                        float g = fminf(gate[i] + gate_bias, limit);
                        float l = fmaxf(fminf(linear[i] + linear_bias, limit), -limit);
                        float h = g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
                        split_value(h_split + order[i0 + i] * h_stride, term_length(d_ff), terms, u, h);
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
                const split_t *hs[TOKEN_TILE];
                for (int i = 0; i < cnt; i++) hs[i] = h_split + order[i0 + i] * h_stride;
                for (long r = row0; r < row1; r++) {
                    float dots[TOKEN_TILE];
                    row_dot(eb + r * dn_groups * BLOCK_BYTES, es + r * dn_groups, dn_groups, hs, cnt, term_length(d_ff), terms, dots);
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
