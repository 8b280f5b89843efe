// Cloister model-runner: the CUDA kernels of one forward pass over a flat varlen batch.
// Compiled by NVRTC at start-up for the device's compute capability (no toolkit at build),
// with --fmad=false.
// The arithmetic is that of model.rs and quant.rs with the portable CPU kernel, operation
// for operation: activations are quantized to the same 8-bit blocks (32 values, scale =
// max|x| / 127, round half away from zero) before every matrix product, weights stay in the
// blocks the CPU engine holds, and every float sum is taken in the CPU's order (one running
// sum, left to right), with no fused multiply-adds (the _rn intrinsics are never contracted)
// and exp taken in double and rounded to float, as model.rs's exp_f32 does. This matters:
// the 8-bit activation quantization turns a one-ulp difference into a one-step flip of a
// quantized value now and then, and the flips grow layer after layer, so a GPU that only
// reorders additions ends up about 1% away from the CPU in the logits.

#define QK 32
#define WARP 32
#define MAX_HEAD_DIM 256
#define MM_TOKENS 8
#define MM_WARPS 4

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// exp as model.rs's exp_f32: in double, rounded once to float.
__device__ __forceinline__ float exp_f32(float x) { return (float)exp((double)x); }

// A running sum, in lane order, of one value per lane (lanes 0..count-1): every lane gets
// acc + v[0] + v[1] + ... left to right, as a sequential CPU loop adds them.
__device__ __forceinline__ float serial_add(float acc, float v, int count) {
    for (int i = 0; i < count; i++) acc = __fadd_rn(acc, __shfl_sync(0xffffffffu, v, i));
    return acc;
}

__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// x[t] = embedding row tokens[t], from 8-bit blocks. grid: n, block: 256.
extern "C" __global__ void embed_q8(const signed char* __restrict__ q, const float* __restrict__ s,
                                    const int* __restrict__ tokens, float* __restrict__ x, int cols) {
    const int t = blockIdx.x;
    const long row = tokens[t];
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const long at = row * cols + i;
        x[(long)t * cols + i] = __fmul_rn((float)q[at], s[at / QK]);
    }
}

// x[t] = embedding row tokens[t], from 4-bit blocks (byte k: element k low, k + 16 high).
extern "C" __global__ void embed_q4(const unsigned char* __restrict__ nib, const float* __restrict__ s,
                                    const float* __restrict__ mn, const int* __restrict__ tokens,
                                    float* __restrict__ x, int cols) {
    const int t = blockIdx.x;
    const long row = tokens[t];
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const long block = (row * cols + i) / QK;
        const int k = i % QK;
        const unsigned char b = nib[block * 16 + (k & 15)];
        const int v = k < 16 ? (b & 0xf) : (b >> 4);
        x[(long)t * cols + i] = __fadd_rn(__fmul_rn((float)v, s[block]), mn[block]);
    }
}

// out[r] = rms_norm(x[use_rows ? rows[r] : r]) * w. grid: n rows, block: 256.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    const int* __restrict__ rows, int use_rows,
                                    float* __restrict__ out, int cols, float eps) {
    // The sum of squares in the CPU's order: one thread, left to right.
    __shared__ float total;
    const int r = blockIdx.x;
    const long src = use_rows ? rows[r] : r;
    const float* row = x + src * cols;
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (int i = 0; i < cols; i++) acc = __fadd_rn(acc, __fmul_rn(row[i], row[i]));
        total = acc;
    }
    __syncthreads();
    const float inv =
        __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(total, (float)cols), eps)));
    for (int i = threadIdx.x; i < cols; i += blockDim.x)
        out[(long)r * cols + i] = __fmul_rn(__fmul_rn(row[i], inv), w[i]);
}

// Quantizes `blocks` blocks of 32 values: one warp per block, one lane per value. Also the
// block's sum of dequantized values (the 4-bit kernels' minimum term). block: 256.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, signed char* __restrict__ q,
                                       float* __restrict__ s, float* __restrict__ sums, long blocks) {
    const long b = ((long)blockIdx.x * blockDim.x + threadIdx.x) / WARP;
    const int lane = threadIdx.x & 31;
    if (b >= blocks) return;
    const float v = x[b * QK + lane];
    const float amax = warp_max(fabsf(v));
    const float d = __fdiv_rn(amax, 127.0f);
    const float inv = d > 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    const float y = __fmul_rn(v, inv);
    const float r = fminf(fmaxf(__fadd_rn(y, copysignf(0.5f, y)), -127.0f), 127.0f);
    const int qi = (int)r;
    q[b * QK + lane] = (signed char)qi;
    const int total = warp_sum_int(qi);
    if (lane == 0) {
        s[b] = d;
        sums[b] = __fmul_rn((float)total, d);
    }
}

// out[t * out_stride + out_off + j] (+)= dot(w row j, x row t) over 8-bit weights.
// One warp per (row, tile of MM_TOKENS tokens); lanes take 32 consecutive blocks at a time,
// each block's integer dot is exact, and the scaled block results are added in block order
// into one running sum (quant.rs's portable dot_q8: acc += s * (scale_w * scale_x)).
// grid: (ceil(rows / MM_WARPS), ceil(n / MM_TOKENS)), block: 32 * MM_WARPS.
extern "C" __global__ void matmul_q8(const signed char* __restrict__ wq, const float* __restrict__ ws,
                                     int rows, int cols, const signed char* __restrict__ xq,
                                     const float* __restrict__ xs, int n, float* __restrict__ out,
                                     int out_stride, int out_off, int accumulate) {
    const int j = blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int t0 = blockIdx.y * MM_TOKENS;
    if (j >= rows) return;  // the whole warp: j is the same on every lane
    const int nb = cols / QK;
    const int tn = min(MM_TOKENS, n - t0);
    float acc[MM_TOKENS];
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) acc[u] = 0.0f;
    for (int b0 = 0; b0 < nb; b0 += WARP) {
        const int b = b0 + lane;
        const int count = min(WARP, nb - b0);
        const bool mine = b < nb;
        const long wb = (long)j * nb + (mine ? b : 0);
        const int4* wp = (const int4*)(wq + wb * QK);
        const int4 w0 = wp[0], w1 = wp[1];
        const float wsc = ws[wb];
#pragma unroll
        for (int u = 0; u < MM_TOKENS; u++) {
            if (u < tn) {
                const long xb = (long)(t0 + u) * nb + (mine ? b : 0);
                const int4* xp = (const int4*)(xq + xb * QK);
                const int4 x0 = xp[0], x1 = xp[1];
                int sum = 0;
                sum = __dp4a(w0.x, x0.x, sum); sum = __dp4a(w0.y, x0.y, sum);
                sum = __dp4a(w0.z, x0.z, sum); sum = __dp4a(w0.w, x0.w, sum);
                sum = __dp4a(w1.x, x1.x, sum); sum = __dp4a(w1.y, x1.y, sum);
                sum = __dp4a(w1.z, x1.z, sum); sum = __dp4a(w1.w, x1.w, sum);
                const float term = __fmul_rn((float)sum, __fmul_rn(wsc, xs[xb]));
                acc[u] = serial_add(acc[u], term, count);
            }
        }
    }
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) {
        if (lane == 0 && u < tn) {
            float* o = out + (long)(t0 + u) * out_stride + out_off + j;
            *o = accumulate ? __fadd_rn(*o, acc[u]) : acc[u];
        }
    }
}

// As matmul_q8 over 4-bit weights: value = nibble * scale + min, so (quant.rs's portable
// dot_q4) dot = [running sum over blocks of sum(nibble * q_x) * (scale_w * scale_x)]
//             + [running sum over blocks of min_w * sum_x].
extern "C" __global__ void matmul_q4(const unsigned char* __restrict__ wn, const float* __restrict__ ws,
                                     const float* __restrict__ wm, int rows, int cols,
                                     const signed char* __restrict__ xq, const float* __restrict__ xs,
                                     const float* __restrict__ xsum, int n, float* __restrict__ out,
                                     int out_stride, int out_off, int accumulate) {
    const int j = blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int t0 = blockIdx.y * MM_TOKENS;
    if (j >= rows) return;  // the whole warp
    const int nb = cols / QK;
    const int tn = min(MM_TOKENS, n - t0);
    float acc[MM_TOKENS];
    float accm[MM_TOKENS];
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) { acc[u] = 0.0f; accm[u] = 0.0f; }
    for (int b0 = 0; b0 < nb; b0 += WARP) {
        const int b = b0 + lane;
        const int count = min(WARP, nb - b0);
        const bool mine = b < nb;
        const long wb = (long)j * nb + (mine ? b : 0);
        const int4 packed = *(const int4*)(wn + wb * 16);
        const int lo0 = packed.x & 0x0f0f0f0f, hi0 = (packed.x >> 4) & 0x0f0f0f0f;
        const int lo1 = packed.y & 0x0f0f0f0f, hi1 = (packed.y >> 4) & 0x0f0f0f0f;
        const int lo2 = packed.z & 0x0f0f0f0f, hi2 = (packed.z >> 4) & 0x0f0f0f0f;
        const int lo3 = packed.w & 0x0f0f0f0f, hi3 = (packed.w >> 4) & 0x0f0f0f0f;
        const float wsc = ws[wb];
        const float wmn = wm[wb];
#pragma unroll
        for (int u = 0; u < MM_TOKENS; u++) {
            if (u < tn) {
                const long xb = (long)(t0 + u) * nb + (mine ? b : 0);
                const int4* xp = (const int4*)(xq + xb * QK);
                const int4 x0 = xp[0], x1 = xp[1];
                int sum = 0;
                sum = __dp4a(lo0, x0.x, sum); sum = __dp4a(lo1, x0.y, sum);
                sum = __dp4a(lo2, x0.z, sum); sum = __dp4a(lo3, x0.w, sum);
                sum = __dp4a(hi0, x1.x, sum); sum = __dp4a(hi1, x1.y, sum);
                sum = __dp4a(hi2, x1.z, sum); sum = __dp4a(hi3, x1.w, sum);
                const float term = __fmul_rn((float)sum, __fmul_rn(wsc, xs[xb]));
                acc[u] = serial_add(acc[u], term, count);
                accm[u] = serial_add(accm[u], __fmul_rn(wmn, xsum[xb]), count);
            }
        }
    }
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) {
        if (lane == 0 && u < tn) {
            const float v = __fadd_rn(acc[u], accm[u]);
            float* o = out + (long)(t0 + u) * out_stride + out_off + j;
            *o = accumulate ? __fadd_rn(*o, v) : v;
        }
    }
}

// x[t][i] += bias[i] for i < width. grid: n, block: 256.
extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ bias, int width) {
    const int t = blockIdx.x;
    for (int i = threadIdx.x; i < width; i += blockDim.x) x[(long)t * width + i] += bias[i];
}

// RoPE on the first `rot_heads` heads of each row of qkv (the query heads, then the key
// heads), as model.rs: pairs (2i, 2i+1), or (i, i + half) for NeoX. grid: n, block: 128.
extern "C" __global__ void rope(float* __restrict__ qkv, const int* __restrict__ positions,
                                const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                int row_width, int rot_heads, int head_dim, int neox) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const long p = positions[t];
    float* row = qkv + (long)t * row_width;
    for (int k = threadIdx.x; k < rot_heads * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float c = cos_t[p * half + i], s = sin_t[p * half + i];
        float* head = row + h * head_dim;
        const float x0 = head[a], x1 = head[b];
        head[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        head[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

// Stores each token's keys and values at its slot (block * block_tokens + offset). The
// cache layout is kv.rs's: per layer and block, [kv_head][token in block][head_dim].
// grid: n, block: 128.
extern "C" __global__ void kv_write(const float* __restrict__ qkv, const int* __restrict__ slots,
                                    float* __restrict__ keys, float* __restrict__ values, int layer,
                                    int blocks, int block_tokens, int kv_heads, int head_dim,
                                    int row_width, int k_off, int v_off) {
    const int t = blockIdx.x;
    const long slot = slots[t];
    const long block = slot / block_tokens;
    const long tok = slot % block_tokens;
    const float* row = qkv + (long)t * row_width;
    for (int k = threadIdx.x; k < kv_heads * head_dim; k += blockDim.x) {
        const int h = k / head_dim, i = k % head_dim;
        const long at = (((long)layer * blocks + block) * kv_heads + h) * block_tokens * head_dim
            + tok * head_dim + i;
        keys[at] = row[k_off + k];
        values[at] = row[v_off + k];
    }
}

// Paged attention: token t's query head h over positions 0..ctx_lens[t]-1 of its sequence,
// whose keys and values are found through the sequence's block table; grouped-query: head h
// reads kv head h / (heads / kv_heads). One warp per (token, head), in model.rs's attend()
// order: scores = dot(q, k) * scale (one running sum over the head's dimensions), their
// maximum, exp(score - max) summed position by position, then out += (e * (1 / sum)) * v
// position by position. Lanes take 32 positions at a time for the scores (recomputed in
// each pass, bit for bit the same) and the head's dimensions for the output.
// q rows are `q_stride` apart; out[t][h * head_dim ..]. grid: (n, ceil(heads / 4)), block: 128.
__device__ __forceinline__ long kv_base(const int* table, int p, int layer, int blocks,
                                        int block_tokens, int kv_heads, int kvh, int head_dim) {
    const long block = table[p / block_tokens];
    return (((long)layer * blocks + block) * kv_heads + kvh) * block_tokens * head_dim
        + (long)(p % block_tokens) * head_dim;
}

extern "C" __global__ void paged_attention(const float* __restrict__ q, int q_stride,
                                           float* __restrict__ out, const float* __restrict__ keys,
                                           const float* __restrict__ values, int layer, int blocks,
                                           int block_tokens, const int* __restrict__ token_seq,
                                           const int* __restrict__ ctx_lens,
                                           const int* __restrict__ tables, int max_blocks,
                                           int heads, int kv_heads, int head_dim, float scale) {
    __shared__ float qs[4][MAX_HEAD_DIM];
    const int t = blockIdx.x;
    const int w = threadIdx.x >> 5;
    const int h = blockIdx.y * 4 + w;
    const int lane = threadIdx.x & 31;
    if (h >= heads) return;  // the whole warp
    const int kvh = h / (heads / kv_heads);
    const int per_lane = head_dim / WARP;
    const float* qrow = q + (long)t * q_stride + h * head_dim;
    for (int i = lane; i < head_dim; i += WARP) qs[w][i] = qrow[i];
    __syncwarp();
    const int* table = tables + (long)token_seq[t] * max_blocks;
    const int ctx = ctx_lens[t];
    // Position p's score, or -infinity past the context.
    auto score = [&](int p) -> float {
        if (p >= ctx) return __int_as_float(0xff800000);
        const float* k = keys + kv_base(table, p, layer, blocks, block_tokens, kv_heads, kvh, head_dim);
        float dot = 0.0f;
        for (int i = 0; i < head_dim; i++) dot = __fadd_rn(dot, __fmul_rn(qs[w][i], k[i]));
        return __fmul_rn(dot, scale);
    };
    float m = __int_as_float(0xff800000);  // -infinity
    for (int p0 = 0; p0 < ctx; p0 += WARP) m = fmaxf(m, score(p0 + lane));
    m = warp_max(m);
    float sum = 0.0f;
    for (int p0 = 0; p0 < ctx; p0 += WARP) {
        const int p = p0 + lane;
        const float e = p < ctx ? exp_f32(__fsub_rn(score(p), m)) : 0.0f;
        sum = serial_add(sum, e, min(WARP, ctx - p0));
    }
    const float inv = __fdiv_rn(1.0f, sum);
    float acc[MAX_HEAD_DIM / WARP];
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / WARP; i++) acc[i] = 0.0f;
    for (int p0 = 0; p0 < ctx; p0 += WARP) {
        const int p = p0 + lane;
        const float alpha = p < ctx ? __fmul_rn(exp_f32(__fsub_rn(score(p), m)), inv) : 0.0f;
        const int count = min(WARP, ctx - p0);
        for (int jj = 0; jj < count; jj++) {
            const float a = __shfl_sync(0xffffffffu, alpha, jj);
            const float* v = values + kv_base(table, p0 + jj, layer, blocks, block_tokens, kv_heads, kvh, head_dim);
#pragma unroll
            for (int i = 0; i < MAX_HEAD_DIM / WARP; i++)
                if (i < per_lane) acc[i] = __fadd_rn(acc[i], __fmul_rn(a, v[lane + i * WARP]));
        }
    }
    float* orow = out + (long)t * heads * head_dim + h * head_dim;
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / WARP; i++)
        if (i < per_lane) orow[lane + i * WARP] = acc[i];
}

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][ffn + i]. grid: n, block: 256.
extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out, int ffn) {
    const int t = blockIdx.x;
    const float* g = gate_up + (long)t * 2 * ffn;
    for (int i = threadIdx.x; i < ffn; i += blockDim.x) {
        const float x = g[i];
        out[(long)t * ffn + i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, exp_f32(-x))), g[ffn + i]);
    }
}

// Copies block `from` to block `to` in every layer (copy-on-write). grid: layers, block: 256.
extern "C" __global__ void copy_block(float* __restrict__ keys, float* __restrict__ values, int blocks,
                                      long block_len, int from, int to) {
    const long layer = blockIdx.x;
    const long src = (layer * blocks + from) * block_len;
    const long dst = (layer * blocks + to) * block_len;
    for (long i = threadIdx.x; i < block_len; i += blockDim.x) {
        keys[dst + i] = keys[src + i];
        values[dst + i] = values[src + i];
    }
}
