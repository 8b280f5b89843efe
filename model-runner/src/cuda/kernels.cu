// Cloister model-runner: the CUDA kernels of one forward pass over a flat varlen batch.
// Compiled by NVRTC at start-up for the device's compute capability (no toolkit at build).
// The arithmetic mirrors model.rs and quant.rs: activations are quantized to the same 8-bit
// blocks (32 values, scale = max|x| / 127, round half away from zero) before every matrix
// product, and weights stay in the blocks the CPU engine holds (4-bit as GGUF stores them,
// with f32 scale and minimum; or 8-bit). Only the order of float additions differs.

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
        x[(long)t * cols + i] = (float)q[at] * s[at / QK];
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
        x[(long)t * cols + i] = (float)v * s[block] + mn[block];
    }
}

// out[r] = rms_norm(x[use_rows ? rows[r] : r]) * w. grid: n rows, block: 256.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    const int* __restrict__ rows, int use_rows,
                                    float* __restrict__ out, int cols, float eps) {
    __shared__ float partial[32];
    const int r = blockIdx.x;
    const long src = use_rows ? rows[r] : r;
    const float* row = x + src * cols;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) acc += row[i] * row[i];
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0) partial[0] = v;
    }
    __syncthreads();
    const float inv = 1.0f / sqrtf(partial[0] / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) out[(long)r * cols + i] = row[i] * inv * w[i];
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
    const float d = amax / 127.0f;
    const float inv = d > 0.0f ? 1.0f / d : 0.0f;
    const float y = v * inv;
    const float r = fminf(fmaxf(y + copysignf(0.5f, y), -127.0f), 127.0f);
    const int qi = (int)r;
    q[b * QK + lane] = (signed char)qi;
    const int total = warp_sum_int(qi);
    if (lane == 0) {
        s[b] = d;
        sums[b] = (float)total * d;
    }
}

// out[t * out_stride + out_off + j] (+)= dot(w row j, x row t) over 8-bit weights.
// One warp per (row, tile of MM_TOKENS tokens); lanes take the row's blocks in turn.
// grid: (ceil(rows / MM_WARPS), ceil(n / MM_TOKENS)), block: 32 * MM_WARPS.
extern "C" __global__ void matmul_q8(const signed char* __restrict__ wq, const float* __restrict__ ws,
                                     int rows, int cols, const signed char* __restrict__ xq,
                                     const float* __restrict__ xs, int n, float* __restrict__ out,
                                     int out_stride, int out_off, int accumulate) {
    const int j = blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int t0 = blockIdx.y * MM_TOKENS;
    if (j >= rows) return;
    const int nb = cols / QK;
    const int tn = min(MM_TOKENS, n - t0);
    float acc[MM_TOKENS];
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) acc[u] = 0.0f;
    for (int b = lane; b < nb; b += WARP) {
        const long wb = (long)j * nb + b;
        const int4* wp = (const int4*)(wq + wb * QK);
        const int4 w0 = wp[0], w1 = wp[1];
        const float wsc = ws[wb];
#pragma unroll
        for (int u = 0; u < MM_TOKENS; u++) {
            if (u < tn) {
                const long xb = (long)(t0 + u) * nb + b;
                const int4* xp = (const int4*)(xq + xb * QK);
                const int4 x0 = xp[0], x1 = xp[1];
                int sum = 0;
                sum = __dp4a(w0.x, x0.x, sum); sum = __dp4a(w0.y, x0.y, sum);
                sum = __dp4a(w0.z, x0.z, sum); sum = __dp4a(w0.w, x0.w, sum);
                sum = __dp4a(w1.x, x1.x, sum); sum = __dp4a(w1.y, x1.y, sum);
                sum = __dp4a(w1.z, x1.z, sum); sum = __dp4a(w1.w, x1.w, sum);
                acc[u] += (float)sum * (wsc * xs[xb]);
            }
        }
    }
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) {
        const float v = warp_sum(acc[u]);
        if (lane == 0 && u < tn) {
            float* o = out + (long)(t0 + u) * out_stride + out_off + j;
            *o = accumulate ? *o + v : v;
        }
    }
}

// As matmul_q8 over 4-bit weights: value = nibble * scale + min, so
// dot = sum_blocks(scale_w * scale_x * sum(nibble * q_x)) + sum_blocks(min_w * sum_x).
extern "C" __global__ void matmul_q4(const unsigned char* __restrict__ wn, const float* __restrict__ ws,
                                     const float* __restrict__ wm, int rows, int cols,
                                     const signed char* __restrict__ xq, const float* __restrict__ xs,
                                     const float* __restrict__ xsum, int n, float* __restrict__ out,
                                     int out_stride, int out_off, int accumulate) {
    const int j = blockIdx.x * MM_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int t0 = blockIdx.y * MM_TOKENS;
    if (j >= rows) return;
    const int nb = cols / QK;
    const int tn = min(MM_TOKENS, n - t0);
    float acc[MM_TOKENS];
    float accm[MM_TOKENS];
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) { acc[u] = 0.0f; accm[u] = 0.0f; }
    for (int b = lane; b < nb; b += WARP) {
        const long wb = (long)j * nb + b;
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
                const long xb = (long)(t0 + u) * nb + b;
                const int4* xp = (const int4*)(xq + xb * QK);
                const int4 x0 = xp[0], x1 = xp[1];
                int sum = 0;
                sum = __dp4a(lo0, x0.x, sum); sum = __dp4a(lo1, x0.y, sum);
                sum = __dp4a(lo2, x0.z, sum); sum = __dp4a(lo3, x0.w, sum);
                sum = __dp4a(hi0, x1.x, sum); sum = __dp4a(hi1, x1.y, sum);
                sum = __dp4a(hi2, x1.z, sum); sum = __dp4a(hi3, x1.w, sum);
                acc[u] += (float)sum * (wsc * xs[xb]);
                accm[u] += wmn * xsum[xb];
            }
        }
    }
#pragma unroll
    for (int u = 0; u < MM_TOKENS; u++) {
        const float v = warp_sum(acc[u]) + warp_sum(accm[u]);
        if (lane == 0 && u < tn) {
            float* o = out + (long)(t0 + u) * out_stride + out_off + j;
            *o = accumulate ? *o + v : v;
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
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
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
// whose keys and values are found through the sequence's block table. One warp per (token,
// head), online softmax; grouped-query: head h reads kv head h / (heads / kv_heads).
// q rows are `q_stride` apart; out[t][h * head_dim ..]. grid: (n, ceil(heads / 4)), block: 128.
extern "C" __global__ void paged_attention(const float* __restrict__ q, int q_stride,
                                           float* __restrict__ out, const float* __restrict__ keys,
                                           const float* __restrict__ values, int layer, int blocks,
                                           int block_tokens, const int* __restrict__ token_seq,
                                           const int* __restrict__ ctx_lens,
                                           const int* __restrict__ tables, int max_blocks,
                                           int heads, int kv_heads, int head_dim, float scale) {
    const int t = blockIdx.x;
    const int h = blockIdx.y * 4 + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (h >= heads) return;
    const int kvh = h / (heads / kv_heads);
    const int per_lane = head_dim / WARP;
    const float* qrow = q + (long)t * q_stride + h * head_dim;
    float qv[MAX_HEAD_DIM / WARP];
    float acc[MAX_HEAD_DIM / WARP];
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / WARP; i++) {
        qv[i] = i < per_lane ? qrow[lane + i * WARP] : 0.0f;
        acc[i] = 0.0f;
    }
    const int* table = tables + (long)token_seq[t] * max_blocks;
    const int ctx = ctx_lens[t];
    float m = __int_as_float(0xff800000), l = 0.0f;  // -infinity
    for (int p = 0; p < ctx; p++) {
        const long block = table[p / block_tokens];
        const long base = (((long)layer * blocks + block) * kv_heads + kvh) * block_tokens * head_dim
            + (long)(p % block_tokens) * head_dim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / WARP; i++)
            if (i < per_lane) dot += qv[i] * keys[base + lane + i * WARP];
        const float sc = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, sc);
        const float corr = expf(m - m_new);
        const float w = expf(sc - m_new);
        l = l * corr + w;
#pragma unroll
        for (int i = 0; i < MAX_HEAD_DIM / WARP; i++)
            if (i < per_lane) acc[i] = acc[i] * corr + w * values[base + lane + i * WARP];
        m = m_new;
    }
    const float inv = 1.0f / l;
    float* orow = out + (long)t * heads * head_dim + h * head_dim;
#pragma unroll
    for (int i = 0; i < MAX_HEAD_DIM / WARP; i++)
        if (i < per_lane) orow[lane + i * WARP] = acc[i] * inv;
}

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][ffn + i]. grid: n, block: 256.
extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out, int ffn) {
    const int t = blockIdx.x;
    const float* g = gate_up + (long)t * 2 * ffn;
    for (int i = threadIdx.x; i < ffn; i += blockDim.x) {
        const float x = g[i];
        out[(long)t * ffn + i] = x / (1.0f + expf(-x)) * g[ffn + i];
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
