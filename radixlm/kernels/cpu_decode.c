/* One batch-1 decode step of a Llama-shaped model, all of it in one call: the embedding row, every
 * layer (RMSNorm, q/k/v in GGUF blocks, neox rotary, the KV write into the paged pool, attention
 * over the request's pool slots, o, residual, RMSNorm, gate/up, SiLU-and-mul, down, residual) and
 * the final RMSNorm. The linears go through rlm_q4_matmul (cpu_q4.c, linked into the same
 * library); everything else is float32 here, in the order the torch model computes it, so the
 * hidden state equals the eager forward's up to float32 summation order (with int8_activations, the
 * opt-in llama.cpp-style int8 dots of cpu_q4.c, it does not: top-1 agreement is what holds).
 *
 * Invariants the caller (cpu_decode.py) checks once when it binds the model: every pointer is
 * float32 / int64 contiguous memory that outlives the call; heads % kv_heads == 0; head_dim is
 * even; hidden, heads * head_dim and intermediate are multiples of 32 (the GGUF block). The K/V
 * caches are [slots, kv_heads, head_dim]. A request's table row holds the pool slot of each of its
 * tokens, the new one (at `position`) included.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void rlm_q4_matmul(const float *x, int64_t m, int64_t k, const uint8_t *w, int kind, int64_t n, float *y,
                   int threads);
int rlm_q4_matvec_int8(const float *x, int64_t k, const uint8_t *w, int kind, int64_t n, float *y, int threads);

typedef struct {
    const float *input_norm, *post_norm; /* [hidden] */
    const uint8_t *qkv, *o, *gate_up, *down;
    int32_t qkv_kind, o_kind, gate_up_kind, down_kind; /* cpu_q4.c's KIND_* */
    float *k_cache, *v_cache;                          /* [slots, kv_heads, head_dim] */
} RlmLayer;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, intermediate, layers, vocab, positions, slots;
    float eps, scale;
    int32_t int8_activations; /* chosen at start-up: 1 = rlm_q4_matvec_int8, 0 = the float32 dots */
    const float *embed;     /* [vocab, hidden] */
    const float *cos, *sin; /* [positions, head_dim / 2] */
    const float *final_norm;
    const RlmLayer *layer; /* [layers] */
} RlmModel;

/* out = weight * (x / sqrt(mean(x^2) + eps)), as RMSNorm does in float32. */
static void rmsnorm(const float *x, const float *weight, int64_t n, float eps, float *out) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += x[i] * x[i];
    const float inv = 1.0f / sqrtf(sum / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/* Half-split rotary of `count` heads of `dim` in place, by one position's cos / sin rows. */
static void rotate(float *x, int64_t count, int64_t dim, const float *cos, const float *sin) {
    const int64_t half = dim / 2;
    for (int64_t h = 0; h < count; h++) {
        float *v = x + h * dim;
        for (int64_t i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

/* out [heads, dim] = softmax(q K^T * scale) V over the `length` slots of `row`; query head h reads
 * KV head h / (heads / kv_heads). `scores` has room for `length` floats. */
static void attend(const RlmModel *m, const float *q, const float *k_cache, const float *v_cache, const int64_t *row,
                   int64_t length, float *scores, float *out) {
    const int64_t d = m->head_dim, group = m->heads / m->kv_heads, stride = m->kv_heads * d;
    for (int64_t h = 0; h < m->heads; h++) {
        const int64_t offset = (h / group) * d;
        const float *qh = q + h * d;
        float top = -INFINITY;
        for (int64_t l = 0; l < length; l++) {
            scores[l] = dot(qh, k_cache + row[l] * stride + offset, d) * m->scale;
            top = scores[l] > top ? scores[l] : top;
        }
        float total = 0.0f;
        for (int64_t l = 0; l < length; l++) total += (scores[l] = expf(scores[l] - top));
        float *o = out + h * d;
        memset(o, 0, sizeof(float) * d);
        for (int64_t l = 0; l < length; l++) {
            const float p = scores[l] / total, *v = v_cache + row[l] * stride + offset;
            for (int64_t i = 0; i < d; i++) o[i] += p * v[i];
        }
    }
}

/* y [n] = W x for the linear in blocks `w` of `kind`, with the activations chosen at start-up. */
static void matvec(const RlmModel *m, const float *x, int64_t k, const uint8_t *w, int kind, int64_t n, float *y,
                   int threads) {
    if (m->int8_activations && rlm_q4_matvec_int8(x, k, w, kind, n, y, threads) == 0) return;
    rlm_q4_matmul(x, 1, k, w, kind, n, y, threads); /* float32, or int8 out of memory for its codes */
}

typedef struct {
    float *stream, *normed, *qkv, *attn, *proj, *gate_up;
} Scratch;

static void layer_step(const RlmModel *m, const RlmLayer *l, int64_t position, int64_t slot, const int64_t *row,
                       Scratch s, float *scores, int threads) {
    const int64_t hd = m->head_dim, q_size = m->heads * hd, kv_size = m->kv_heads * hd, inter = m->intermediate;
    rmsnorm(s.stream, l->input_norm, m->hidden, m->eps, s.normed);
    matvec(m, s.normed, m->hidden, l->qkv, l->qkv_kind, q_size + 2 * kv_size, s.qkv, threads);
    const float *cos = m->cos + position * (hd / 2), *sin = m->sin + position * (hd / 2);
    rotate(s.qkv, m->heads + m->kv_heads, hd, cos, sin); /* q's heads, then k's: contiguous */
    memcpy(l->k_cache + slot * kv_size, s.qkv + q_size, sizeof(float) * kv_size);
    memcpy(l->v_cache + slot * kv_size, s.qkv + q_size + kv_size, sizeof(float) * kv_size);
    attend(m, s.qkv, l->k_cache, l->v_cache, row, position + 1, scores, s.attn);
    matvec(m, s.attn, q_size, l->o, l->o_kind, m->hidden, s.proj, threads);
    for (int64_t i = 0; i < m->hidden; i++) s.stream[i] += s.proj[i];
    rmsnorm(s.stream, l->post_norm, m->hidden, m->eps, s.normed);
    matvec(m, s.normed, m->hidden, l->gate_up, l->gate_up_kind, 2 * inter, s.gate_up, threads);
    for (int64_t i = 0; i < inter; i++) {
        const float g = s.gate_up[i];
        s.gate_up[i] = g / (1.0f + expf(-g)) * s.gate_up[inter + i];
    }
    matvec(m, s.gate_up, inter, l->down, l->down_kind, m->hidden, s.proj, threads);
    for (int64_t i = 0; i < m->hidden; i++) s.stream[i] += s.proj[i];
}

/* The final-norm hidden state [hidden] of one decode token into `out`. `inputs` holds the token id,
 * its position, its KV slot and its request's table row, `stride` elements apart (a [4, 1] tensor's
 * rows); `table` is the request-to-slot table, `table_stride` elements per row.
 * Returns 0, or 1 for a token id outside the vocabulary, 2 for a position outside the rotary
 * tables, 3 for a slot outside the pool (nothing is written then), 4 when out of memory. */
int rlm_decode_step(const RlmModel *m, const int64_t *inputs, int64_t stride, const int64_t *table,
                    int64_t table_stride, float *out, int threads) {
    const int64_t token = inputs[0], position = inputs[stride], slot = inputs[2 * stride];
    const int64_t *row = table + inputs[3 * stride] * table_stride;
    if (token < 0 || token >= m->vocab) return 1;
    if (position < 0 || position >= m->positions) return 2;
    for (int64_t l = 0; l <= position; l++)
        if (row[l] < 0 || row[l] >= m->slots) return 3;
    if (slot != row[position]) return 3;
    const int64_t qkv = (m->heads + 2 * m->kv_heads) * m->head_dim;
    const int64_t floats = 2 * m->hidden + qkv + m->heads * m->head_dim + m->hidden + 2 * m->intermediate;
    float *buffer = malloc(sizeof(float) * (floats + position + 1));
    if (buffer == NULL) return 4;
    Scratch s;
    s.stream = buffer;
    s.normed = s.stream + m->hidden;
    s.qkv = s.normed + m->hidden;
    s.attn = s.qkv + qkv;
    s.proj = s.attn + m->heads * m->head_dim;
    s.gate_up = s.proj + m->hidden;
    float *scores = s.gate_up + 2 * m->intermediate;
    memcpy(s.stream, m->embed + token * m->hidden, sizeof(float) * m->hidden);
    for (int64_t i = 0; i < m->layers; i++) layer_step(m, &m->layer[i], position, slot, row, s, scores, threads);
    rmsnorm(s.stream, m->final_norm, m->hidden, m->eps, out);
    free(buffer);
    return 0;
}
