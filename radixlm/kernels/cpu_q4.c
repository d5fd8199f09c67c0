/* GGUF weights of 32-element blocks (Q4_0, Q4_1, Q8_0) multiplied on the CPU in their blocks: y = x W^T.
 *
 * W [N, K] is N rows of K / 32 blocks, read as llama.cpp stores them (float16 fields
 * little-endian; element j < 16 of a block in the low nibble of code byte j, element 16 + j in
 * its high nibble):
 *   Q4_1 (20 bytes): d, m, 16 code bytes;  w = d q + m
 *   Q4_0 (18 bytes): d,    16 code bytes;  w = d q - 8 d
 *   Q8_0 (34 bytes): d,    32 int8 codes;  w = d q  (element j in byte j)
 *
 * rlm_q4_matmul reads each weight byte once per call. One row of x is dotted block by block
 * against the codes widened to floats in registers, four rows of W at a time (independent
 * multiply-add chains), each block's offset folded in through the block sums of x, the rows a few
 * groups ahead prefetched (each is read once per call, from memory rather than cache). Several rows
 * of x first widen a row of W into a buffer, then dot every row of x against it. Rows of W are
 * split over `threads` OpenMP threads. All arithmetic is float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define BLOCK 32

enum { KIND_Q4_0 = 0, KIND_Q4_1 = 1, KIND_Q8_0 = 2 };

typedef struct {
    int64_t bytes; /* bytes per block: 18, 20 or 34 */
    int kind;      /* KIND_* */
} Format;

static inline float half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023;
    uint32_t bits;
    if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        float f = (float)man * (1.0f / 16777216.0f); /* subnormal: man * 2^-24 */
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
#endif
}

/* (scale, offset) of a block and where its 16 code bytes start. */
static inline const uint8_t *block_fields(const uint8_t *blk, Format f, float *d, float *m) {
    *d = half(blk);
    *m = f.kind == KIND_Q4_1 ? half(blk + 2) : f.kind == KIND_Q4_0 ? -8.0f * *d : 0.0f;
    return blk + (f.kind == KIND_Q4_1 ? 4 : 2);
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 32 codes of a block as floats: w[0..3] hold elements 0-7, 8-15, 16-23, 24-31. Each group of
 * eight bytes is widened straight from memory (no register shuffles); a 4-bit code byte j < 8
 * gives element j (low nibble) and 16 + j (high nibble). */
static inline void codes(const uint8_t *qb, Format f, __m256 w[4]) {
    if (f.kind == KIND_Q8_0) {
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 8 * i))));
        return;
    }
    const __m256i mask = _mm256_set1_epi32(15);
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qb));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qb + 8)));
    w[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
    w[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, mask));
    w[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
    w[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}

/* sum_i code_i x_i over one block, as 8 partial sums. */
static inline __m256 block_dot(const uint8_t *qb, Format f, const __m256 xv[4]) {
    __m256 w[4];
    codes(qb, f, w);
    __m256 s = _mm256_mul_ps(w[0], xv[0]);
    for (int i = 1; i < 4; i++) s = _mm256_fmadd_ps(w[i], xv[i], s);
    return s;
}

/* A block's float16 fields as floats: [d, m, 0, 0] (Q4_1), [d, 0, 0, 0] (Q4_0, Q8_0). */
static inline __m128 block_scales(const uint8_t *blk, Format f) {
    uint32_t raw = 0;
    memcpy(&raw, blk, f.kind == KIND_Q4_1 ? 4 : 2);
    return _mm_cvtph_ps(_mm_cvtsi32_si128((int)raw));
}

/* Bytes of W read ahead of the rows being multiplied (software prefetch: the rows of a decode
 * step's projections are read once, from memory rather than cache). */
#define AHEAD 2048

#define ROWS 4
/* `rows` (<= ROWS) consecutive rows of W against one row of x. `xz` holds two floats per block
 * that a block's scales [d, m] are multiplied by to give its offset term: (0, sum x) for Q4_1
 * (m sum x), (-8 sum x, 0) for Q4_0 (-8 d sum x), (0, 0) for Q8_0. */
static void dot_rows(const uint8_t *w, int64_t row_bytes, int rows, Format f, const float *x, const float *xz,
                     int64_t blocks, float *y) {
    __m256 acc[ROWS];
    __m128 offset[ROWS];
    for (int j = 0; j < ROWS; j++) acc[j] = _mm256_setzero_ps(), offset[j] = _mm_setzero_ps();
    const int64_t step = ROWS * f.bytes; /* the bytes of the group's rows each block stands for */
    const uint8_t *ahead = w + AHEAD;
    const int skip = f.kind == KIND_Q4_1 ? 4 : 2;
    for (int64_t b = 0; b < blocks; b++) {
        for (int64_t at = b * step; at < (b + 1) * step; at += 64)
            _mm_prefetch((const char *)ahead + at, _MM_HINT_T0);
        const float *xb = x + BLOCK * b;
        const __m256 xv[4] = {_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8), _mm256_loadu_ps(xb + 16),
                              _mm256_loadu_ps(xb + 24)};
        const __m128 zb = _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(xz + 2 * b)));
        for (int j = 0; j < rows; j++) {
            const uint8_t *blk = w + j * row_bytes + b * f.bytes;
            const __m128 dm = block_scales(blk, f);
            acc[j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dm), block_dot(blk + skip, f, xv), acc[j]);
            offset[j] = _mm_fmadd_ps(dm, zb, offset[j]);
        }
    }
    for (int j = 0; j < rows; j++)
        y[j] = hsum(acc[j]) + _mm_cvtss_f32(_mm_add_ss(offset[j], _mm_movehdup_ps(offset[j])));
}

static void widen_row(const uint8_t *w, Format f, int64_t blocks, float *out) {
    for (int64_t b = 0; b < blocks; b++) {
        float d, m;
        __m256 c[4];
        codes(block_fields(w + b * f.bytes, f, &d, &m), f, c);
        const __m256 dv = _mm256_set1_ps(d), mv = _mm256_set1_ps(m);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(out + BLOCK * b + 8 * i, _mm256_fmadd_ps(c[i], dv, mv));
    }
}

static float dot(const float *a, const float *b, int64_t k) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}
#else
#define ROWS 1
static void dot_rows(const uint8_t *w, int64_t row_bytes, int rows, Format f, const float *x, const float *xz,
                     int64_t blocks, float *y) {
    (void)row_bytes, (void)rows;
    float acc = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        float d, m;
        const uint8_t *qb = block_fields(w + b * f.bytes, f, &d, &m);
        const float *xb = x + BLOCK * b;
        float s = 0.0f;
        if (f.kind == KIND_Q8_0) {
            for (int j = 0; j < BLOCK; j++) s += xb[j] * (float)(int8_t)qb[j];
        } else {
            for (int j = 0; j < 16; j++) s += xb[j] * (float)(qb[j] & 15) + xb[j + 16] * (float)(qb[j] >> 4);
        }
        acc += d * (s + xz[2 * b]) + (f.kind == KIND_Q4_1 ? m : 0.0f) * xz[2 * b + 1];
    }
    y[0] = acc;
}

static void widen_row(const uint8_t *w, Format f, int64_t blocks, float *out) {
    for (int64_t b = 0; b < blocks; b++) {
        float d, m;
        const uint8_t *qb = block_fields(w + b * f.bytes, f, &d, &m);
        if (f.kind == KIND_Q8_0) {
            for (int j = 0; j < BLOCK; j++) out[BLOCK * b + j] = d * (float)(int8_t)qb[j];
            continue;
        }
        for (int j = 0; j < 16; j++) {
            out[BLOCK * b + j] = d * (float)(qb[j] & 15) + m;
            out[BLOCK * b + j + 16] = d * (float)(qb[j] >> 4) + m;
        }
    }
}

static float dot(const float *a, const float *b, int64_t k) {
    float acc = 0.0f;
    for (int64_t i = 0; i < k; i++) acc += a[i] * b[i];
    return acc;
}
#endif

static Format format_of(int kind) {
    Format f = {kind == KIND_Q8_0 ? 34 : kind == KIND_Q4_1 ? 20 : 18, kind};
    return f;
}

/* dot_rows' `xz`: per block of x, the factors of its scales [d, m] that give the block's offset. */
static void offset_factors(const float *x, int64_t blocks, Format f, float *xz) {
    for (int64_t b = 0; b < blocks; b++) {
        float s = 0.0f;
        for (int i = 0; i < BLOCK; i++) s += x[BLOCK * b + i];
        xz[2 * b] = f.kind == KIND_Q4_0 ? -8.0f * s : 0.0f;
        xz[2 * b + 1] = f.kind == KIND_Q4_1 ? s : 0.0f;
    }
}

/* y [M, N] = x [M, K] W^T; x and y float32, row-major, contiguous; w [N, row_bytes]. */
void rlm_q4_matmul(const float *x, int64_t m, int64_t k, const uint8_t *w, int kind, int64_t n, float *y,
                   int threads) {
    const Format f = format_of(kind);
    const int64_t blocks = k / BLOCK, row_bytes = blocks * f.bytes;
    if (m == 1) {
        float *xz = malloc(2 * sizeof(float) * blocks);
        offset_factors(x, blocks, f, xz);
        const int64_t groups = (n + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t r = g * ROWS;
            const int rows = n - r < ROWS ? (int)(n - r) : ROWS;
            dot_rows(w + r * row_bytes, row_bytes, rows, f, x, xz, blocks, y + r);
        }
        free(xz);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        float *row = malloc(sizeof(float) * k);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            widen_row(w + r * row_bytes, f, blocks, row);
            for (int64_t i = 0; i < m; i++) y[i * n + r] = dot(x + i * k, row, k);
        }
        free(row);
    }
}

/* out [N, K] float32 = W. */
void rlm_q4_dequantize(const uint8_t *w, int kind, int64_t n, int64_t k, float *out, int threads) {
    const Format f = format_of(kind);
    const int64_t blocks = k / BLOCK, row_bytes = blocks * f.bytes;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < n; r++) widen_row(w + r * row_bytes, f, blocks, out + r * k);
}

/* -- int8 activations (opt-in: `--gguf-cpu-activations int8`) ----------------------------------
 * One row of x is first quantized per 32-element block, as llama.cpp quantizes activations to
 * Q8_0: codes p = round(x / dx) in [-127, 127] with dx = max |x| / 127, and sx = dx * sum p.
 * Then w . x = sum over blocks of d dx (q . p) + m sx, q . p in exact integer arithmetic. This
 * changes the numerics (x loses ~1/254 of its block's range), so logits no longer equal the
 * float32 path: tests check top-1 agreement instead. */
static void quantize_x(const float *x, int64_t blocks, int8_t *p, float *dx, float *sx) {
    for (int64_t b = 0; b < blocks; b++) {
        const float *xb = x + BLOCK * b;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) amax = fabsf(xb[i]) > amax ? fabsf(xb[i]) : amax;
        const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            const int v = (int)nearbyintf(xb[i] * inv);
            p[BLOCK * b + i] = (int8_t)v;
            sum += v;
        }
        dx[b] = d;
        sx[b] = d * (float)sum;
    }
}

#ifdef __AVX2__
/* q . p of one block as 8 int32 partial sums converted to float. */
static inline __m256 block_int_dot(const uint8_t *qb, Format f, const int8_t *p) {
    const __m256i pv = _mm256_loadu_si256((const __m256i *)p);
    __m256i pairs;
    if (f.kind == KIND_Q8_0) {
        const __m256i w = _mm256_loadu_si256((const __m256i *)qb);
        pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(pv, w));
    } else {
        const __m128i raw = _mm_loadu_si128((const __m128i *)qb);
        const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
        pairs = _mm256_maddubs_epi16(_mm256_and_si256(both, _mm256_set1_epi8(15)), pv);
    }
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

static void int_dot_rows(const uint8_t *w, int64_t row_bytes, int rows, Format f, const int8_t *p, const float *dx,
                         const float *sx, int64_t blocks, float *y) {
    __m256 acc[ROWS];
    float offset[ROWS];
    for (int j = 0; j < ROWS; j++) acc[j] = _mm256_setzero_ps(), offset[j] = 0.0f;
    const int64_t step = ROWS * f.bytes;
    for (int64_t b = 0; b < blocks; b++) {
        for (int64_t at = b * step; at < (b + 1) * step; at += 64)
            _mm_prefetch((const char *)w + AHEAD + at, _MM_HINT_T0);
        for (int j = 0; j < rows; j++) {
            float d, m;
            const uint8_t *qb = block_fields(w + j * row_bytes + b * f.bytes, f, &d, &m);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx[b]), block_int_dot(qb, f, p + BLOCK * b), acc[j]);
            offset[j] += m * sx[b];
        }
    }
    for (int j = 0; j < rows; j++) y[j] = hsum(acc[j]) + offset[j];
}
#else
static void int_dot_rows(const uint8_t *w, int64_t row_bytes, int rows, Format f, const int8_t *p, const float *dx,
                         const float *sx, int64_t blocks, float *y) {
    (void)row_bytes, (void)rows;
    float acc = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        float d, m;
        const uint8_t *qb = block_fields(w + b * f.bytes, f, &d, &m);
        const int8_t *pb = p + BLOCK * b;
        int s = 0;
        if (f.kind == KIND_Q8_0) {
            for (int j = 0; j < BLOCK; j++) s += (int8_t)qb[j] * pb[j];
        } else {
            for (int j = 0; j < 16; j++) s += (qb[j] & 15) * pb[j] + (qb[j] >> 4) * pb[j + 16];
        }
        acc += d * dx[b] * (float)s + m * sx[b];
    }
    y[0] = acc;
}
#endif

/* y [N] = W x for one row x [K] with x quantized to int8 blocks first (see above). Returns 0, or
 * 4 when out of memory (y untouched). */
int rlm_q4_matvec_int8(const float *x, int64_t k, const uint8_t *w, int kind, int64_t n, float *y, int threads) {
    const Format f = format_of(kind);
    const int64_t blocks = k / BLOCK, row_bytes = blocks * f.bytes;
    int8_t *p = malloc(k + 2 * sizeof(float) * blocks);
    if (p == NULL) return 4;
    float *dx = (float *)(p + k), *sx = dx + blocks; /* k is a multiple of 32: dx stays aligned */
    quantize_x(x, blocks, p, dx, sx);
    const int64_t groups = (n + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        const int64_t r = g * ROWS;
        const int rows = n - r < ROWS ? (int)(n - r) : ROWS;
        int_dot_rows(w + r * row_bytes, row_bytes, rows, f, p, dx, sx, blocks, y + r);
    }
    free(p);
    return 0;
}
