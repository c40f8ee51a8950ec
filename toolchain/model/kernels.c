/* wasmq model runtime: the Scailable ABI around a plan interpreter.
 *
 * Compiled once (build_kernels.py) to kernels.wasm; the Python planner packs a
 * model's plan, input/output descriptions and weights as one data segment at
 * PLAN_BASE (the first 64-byte boundary after __heap_base) in a copy of the
 * module. Every address in the plan is absolute, so the interpreter only
 * follows pointers. Freestanding: no libc; the one import is WASI fd_write,
 * used only to say on stderr why pred() failed.
 */
#include <stdint.h>
#include <stddef.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(name)))
#define MAGIC 0x314d5157u /* "WQM1" */

typedef struct { const void *buf; size_t len; } ciovec;
__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_write")))
int32_t fd_write(int32_t fd, const ciovec *iovs, int32_t n, int32_t *written);

extern unsigned char __heap_base;

/* ---------------------------------------------------------------- memory */
void *memset(void *d, int c, size_t n) { return __builtin_memset(d, c, n); }
void *memcpy(void *d, const void *s, size_t n) { return __builtin_memcpy(d, s, n); }
void *memmove(void *d, const void *s, size_t n) { return __builtin_memmove(d, s, n); }

static uintptr_t heap_top;

static uintptr_t plan_base(void) { return ((uintptr_t)&__heap_base + 63) & ~(uintptr_t)63; }

static void *alloc(size_t n) {
    uintptr_t p = (heap_top + 15) & ~(uintptr_t)15;
    uintptr_t end = p + n;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end < p) return 0;
    if (end > have) {
        size_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    heap_top = end;
    return (void *)p;
}

/* ---------------------------------------------------------------- errors */
static char errbuf[1024];
static int errlen;

static void err_s(const char *s) { while (*s && errlen < (int)sizeof errbuf - 1) errbuf[errlen++] = *s++; }
static void err_u(uint64_t v) {
    char t[24]; int n = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n && errlen < (int)sizeof errbuf - 1) errbuf[errlen++] = t[--n];
}
static int fail(void) {
    errbuf[errlen++] = '\n';
    ciovec v = {errbuf, (size_t)errlen};
    int32_t w;
    fd_write(2, &v, 1, &w);
    errlen = 0;
    return 1;
}

/* ---------------------------------------------------------------- plan layout */
/* F64 only at the edges: a float64 input is cast to float32 by the plan's first
 * instructions, a float64 output cast from float32 by its last. */
/* STR inputs only: each JSON string becomes its int64 index in the input's vocabulary
 * (the model's categories, NUL-separated at pad[0], pad[1] of them), -1 if not in it. */
/* I8 .. F16 only at the edges too: an integer input cast to int64 (a float16 one to
 * float32) by the plan's first instructions, an output cast back by its last; a Cast
 * to one of them inside the plan goes there and back, so values wrap (or round) as
 * they would in that type. TXT inputs: each string's bytes (unescaped in place in the
 * request) as an int64 {address, length} for the text kernel (op_text). */
enum { F32 = 0, I64 = 1, BOOL = 2, F64 = 3, STR = 4, I8 = 5, U8 = 6, I16 = 7, U16 = 8,
       I32 = 9, U32 = 10, F16 = 11, TXT = 12, NTYPES = 13 };
static const int ESIZE[NTYPES] = {4, 8, 1, 8, 8, 1, 1, 2, 2, 4, 4, 2, 8};
static const char *TNAME[NTYPES] = {"float32", "int64", "bool", "float64", "string", "int8",
                                    "uint8", "int16", "uint16", "int32", "uint32", "float16",
                                    "string"};
static int is_narrow_int(int dt) { return dt >= I8 && dt <= U32; }

/* IEEE half precision, by bits: round to nearest even, subnormals, infinities, NaN. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else if (exp) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) bits = sign;
    else {  /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 1024));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 1023) << 13);
    }
    union { uint32_t u; float f; } v = {bits};
    return v.f;
}
static uint16_t float_to_half(float f) {
    union { float f; uint32_t u; } v = {f};
    uint32_t x = v.u, sign = (x >> 16) & 0x8000, absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((absx >> 13) & 1023));  /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  /* rounds past 65504: inf */
    if (absx < 0x38800000u) {  /* a half subnormal (or zero) */
        if (absx < 0x33000000u) return (uint16_t)sign;  /* under half the smallest */
        uint32_t e = absx >> 23, man = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;  /* 14..24: the mantissa's place in a subnormal half */
        uint32_t q = man >> shift, rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((absx >> 13) - (112u << 10)), rest = absx & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

typedef struct {           /* one model input or output, 16 words */
    const char *name;
    int32_t dtype, ndim, count;
    void *addr;
    int32_t dims[8];
    int32_t pad[3];
} io_t;

typedef struct {
    uint32_t magic, size, arena_end, n_in, n_out, io_off, code_off, code_words;
} header_t;

/* ---------------------------------------------------------------- math */
static const double LN2 = 0.6931471805599453;
static double d_exp(double x) {
    if (x > 709.0) return __builtin_inf();
    if (x < -745.0) return 0.0;
    double k = __builtin_rint(x / LN2);
    double r = x - k * 0.6931471803691238 - k * 1.9082149292705877e-10;
    double p = 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0; p = p * r + 1.0 / 362880.0; p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0; p = p * r + 1.0 / 720.0; p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0; p = p * r + 1.0 / 6.0; p = p * r + 0.5; p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t ki = (int64_t)k;
    /* scale by 2^k in two steps so that subnormal results survive */
    int64_t k1 = ki / 2, k2 = ki - k1;
    union { double d; uint64_t u; } a = {0}, b = {0};
    a.u = (uint64_t)(k1 + 1023) << 52; b.u = (uint64_t)(k2 + 1023) << 52;
    return p * a.d * b.d;
}
static double d_log(double x) {
    if (x < 0 || x != x) return __builtin_nan("");
    if (x == 0) return -__builtin_inf();
    if (x == __builtin_inf()) return x;
    union { double d; uint64_t u; } v = {x};
    int e = 0;
    if ((v.u >> 52) == 0) { v.d *= 4503599627370496.0; e = -52; } /* subnormal */
    e += (int)(v.u >> 52) - 1023;
    v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    if (v.d > 1.4142135623730951) { v.d *= 0.5; e++; }
    double s = (v.d - 1) / (v.d + 1), s2 = s * s, t = s2, sum = 1.0;
    for (int i = 3; i < 31; i += 2) { sum += t / i; t *= s2; }
    return 2 * s * sum + e * LN2;
}
static double d_pow(double x, double y) {
    if (y == 0) return 1.0;
    if (x == 0) return y > 0 ? 0.0 : __builtin_inf();
    if (x < 0) {
        double yi = __builtin_trunc(y);
        if (yi != y) return __builtin_nan("");
        double r = d_exp(y * d_log(-x));
        return __builtin_trunc(yi / 2.0) * 2.0 != yi ? -r : r;
    }
    return d_exp(y * d_log(x));
}
static float f_fmod(float x, float y) {
    if (y == 0 || x != x || y != y || x == __builtin_inff() || x == -__builtin_inff()) return __builtin_nanf("");
    double q = __builtin_trunc((double)x / (double)y);
    return (float)((double)x - q * (double)y);
}
static float f_tanh(float xf) {
    double x = xf;
    if (x > 20) return 1.0f;
    if (x < -20) return -1.0f;
    double e = d_exp(2 * x);
    return (float)((e - 1) / (e + 1));
}
static float f_sigmoid(float x) {
    return (float)(1.0 / (1.0 + d_exp(-(double)x)));
}
static float f_erf(float xf) {  /* erf through its continued series; |error| < 1e-7 */
    double x = xf, ax = x < 0 ? -x : x, r;
    if (ax < 2.5) {
        double term = ax, sum = ax, x2 = ax * ax;
        for (int n = 1; n < 60; n++) { term *= -x2 / n; sum += term / (2 * n + 1); }
        r = sum * 1.1283791670955126;
    } else {
        double t = 1.0 / (1.0 + 0.5 * ax);
        double y = t * d_exp(-ax * ax - 1.26551223 + t * (1.00002368 + t * (0.37409196 +
                   t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 +
                   t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
        r = 1 - y;
    }
    return (float)(x < 0 ? -r : r);
}

/* ---------------------------------------------------------------- GEMM */
/* C[m][n] = act(sum_k A[m][k] B[k][n] + bias), B rows contiguous.
 * Packed A (constant weights): blocks of 4 rows, [M/4][K][4]. */
typedef struct { int32_t act; float alpha, beta; } act_t;
enum { ACT_NONE = 0, ACT_RELU, ACT_LEAKY, ACT_CLIP };

static inline v128_t vact(v128_t v, act_t a) {
    switch (a.act) {
    case ACT_RELU: return wasm_f32x4_pmax(v, wasm_f32x4_splat(0.0f));  /* v < 0 ? 0 : v; NaN stays */
    case ACT_LEAKY: {
        v128_t neg = wasm_f32x4_lt(v, wasm_f32x4_splat(0.0f));
        return wasm_v128_bitselect(wasm_f32x4_mul(v, wasm_f32x4_splat(a.alpha)), v, neg);
    }
    case ACT_CLIP:
        return wasm_f32x4_min(wasm_f32x4_max(v, wasm_f32x4_splat(a.alpha)), wasm_f32x4_splat(a.beta));
    }
    return v;
}
static inline float sact(float v, act_t a) {
    switch (a.act) {
    case ACT_RELU: return v > 0 ? v : 0;
    case ACT_LEAKY: return v < 0 ? v * a.alpha : v;
    case ACT_CLIP: return v < a.alpha ? a.alpha : (v > a.beta ? a.beta : v);
    }
    return v;
}

/* a*b + c as a multiply and an add. Relaxed SIMD's fused multiply-add was slower: x86
 * FMA overwrites one of its operands, so Cranelift copied each broadcast A value before
 * every use and spilled two of the micro-kernel's eight accumulators to the stack each
 * step (their dependency chain then ran through memory); the multiply and the add take
 * separate pipes and leave every operand in place. Measured in turns under the same load:
 * ResNet-50 0.73x the time, a 7x7 stride-2 stem 0.4x, 1x1 convolutions 0.65 to 0.8x.
 * A browser now rounds these products exactly as a worker does. */
#define MADD(a, b, c) wasm_f32x4_add(wasm_f32x4_mul(a, b), c)

/* The GEMM micro-kernel: a 4x8 tile of C, acc[i][j] += A[k][i] * B[k][j] for n <= MK_STEPS
 * steps k, A packed [k][4], B panel-packed [k][8].
 *
 * Shaped for Cranelift under epoch interruption. Every loop back-edge checks the
 * epoch, and the check's slow path is a call, which clobbers every vector
 * register: accumulators carried around a loop are spilled to the stack and
 * reloaded every iteration. So the steps are unrolled straight-line code with
 * no loop at all. And Cranelift places pure instructions (the FMAs) just before
 * their first use while keeping loads in order, so in straight-line code every
 * load would run first and every loaded vector would be spilled; the early exit
 * after each step ("stop after n steps", which handles short chunks too) uses the
 * accumulators, so each step's FMAs are placed before the next step's loads.
 * 32 steps a call: with the accumulators no longer spilled, halving the calls (each
 * loads and stores its tile of C) took about 3 % off ResNet-50's convolutions.
 * Measured: about 1.7x the looped kernel's throughput. */
#define MK_STEPS 32
#define MK_STEP(i, BS) do { \
    v128_t x0 = wasm_v128_load(bp + (BS) * (i)), x1 = wasm_v128_load(bp + (BS) * (i) + 4); \
    v128_t a_ = wasm_v128_load(ap + 4 * (i)); \
    v128_t s_ = wasm_i32x4_shuffle(a_, a_, 0, 0, 0, 0); \
    c00 = MADD(s_, x0, c00); c01 = MADD(s_, x1, c01); \
    s_ = wasm_i32x4_shuffle(a_, a_, 1, 1, 1, 1); \
    c10 = MADD(s_, x0, c10); c11 = MADD(s_, x1, c11); \
    s_ = wasm_i32x4_shuffle(a_, a_, 2, 2, 2, 2); \
    c20 = MADD(s_, x0, c20); c21 = MADD(s_, x1, c21); \
    s_ = wasm_i32x4_shuffle(a_, a_, 3, 3, 3, 3); \
    c30 = MADD(s_, x0, c30); c31 = MADD(s_, x1, c31); \
    if (n == (i) + 1) goto done; } while (0)
#define MK_STEP4(i, BS) MK_STEP(i, BS); MK_STEP((i) + 1, BS); MK_STEP((i) + 2, BS); MK_STEP((i) + 3, BS)

/* `init`: four starting values (the bias), else the tile's current values are
 * loaded from c; `res`: a residual added before the activation, laid out as c (a Conv
 * followed by Add, ResNet's shortcut); `res` and `act`: 0 on all but the last chunk.
 * BS: floats from one step's 8 values of B to the next's, a constant, so that every
 * address is an offset from bp (a panel: 8; Winograd's interleaved V: 128). */
#define MK_DEFINE(name, BS) \
__attribute__((noinline)) \
static void name(int n, const float *ap, const float *bp, float *c, int ldc, \
                 const float *init, const float *res, const act_t *act) { \
    v128_t c00, c01, c10, c11, c20, c21, c30, c31; \
    if (init) { \
        c00 = c01 = wasm_v128_load32_splat(init); \
        c10 = c11 = wasm_v128_load32_splat(init + 1); \
        c20 = c21 = wasm_v128_load32_splat(init + 2); \
        c30 = c31 = wasm_v128_load32_splat(init + 3); \
    } else { \
        c00 = wasm_v128_load(c); c01 = wasm_v128_load(c + 4); \
        c10 = wasm_v128_load(c + ldc); c11 = wasm_v128_load(c + ldc + 4); \
        c20 = wasm_v128_load(c + 2 * ldc); c21 = wasm_v128_load(c + 2 * ldc + 4); \
        c30 = wasm_v128_load(c + 3 * ldc); c31 = wasm_v128_load(c + 3 * ldc + 4); \
    } \
    if (n <= 0) goto done; \
    MK_STEP4(0, BS); MK_STEP4(4, BS); MK_STEP4(8, BS); MK_STEP4(12, BS); \
    MK_STEP4(16, BS); MK_STEP4(20, BS); MK_STEP4(24, BS); MK_STEP4(28, BS); \
done: \
    if (res) { \
        c00 = wasm_f32x4_add(c00, wasm_v128_load(res)); \
        c01 = wasm_f32x4_add(c01, wasm_v128_load(res + 4)); res += ldc; \
        c10 = wasm_f32x4_add(c10, wasm_v128_load(res)); \
        c11 = wasm_f32x4_add(c11, wasm_v128_load(res + 4)); res += ldc; \
        c20 = wasm_f32x4_add(c20, wasm_v128_load(res)); \
        c21 = wasm_f32x4_add(c21, wasm_v128_load(res + 4)); res += ldc; \
        c30 = wasm_f32x4_add(c30, wasm_v128_load(res)); \
        c31 = wasm_f32x4_add(c31, wasm_v128_load(res + 4)); \
    } \
    if (act && act->act) { \
        c00 = vact(c00, *act); c01 = vact(c01, *act); c10 = vact(c10, *act); c11 = vact(c11, *act); \
        c20 = vact(c20, *act); c21 = vact(c21, *act); c30 = vact(c30, *act); c31 = vact(c31, *act); \
    } \
    wasm_v128_store(c, c00); wasm_v128_store(c + 4, c01); c += ldc; \
    wasm_v128_store(c, c10); wasm_v128_store(c + 4, c11); c += ldc; \
    wasm_v128_store(c, c20); wasm_v128_store(c + 4, c21); c += ldc; \
    wasm_v128_store(c, c30); wasm_v128_store(c + 4, c31); \
}
MK_DEFINE(mk4x8, 8)
MK_DEFINE(mk4x8_wino, 128)

/* C[M][N] (row stride ldc) = act(A B + bias + R): A packed in blocks of 4 rows,
 * [M/4][K][4] (rows padded with zeros), B panel-packed, N/8 panels of [K][8]
 * (columns padded with zeros); R (0: none) laid out as C. Edge tiles go through a
 * scratch tile. */
static void gemm_packed(int M, int N, int K, const float *Ap, const float *Bp, float *C,
                        int ldc, const float *bias, const float *R, act_t act) {
    float tile[32], rtile[32];
    for (int m = 0; m < M; m += 4) {
        int rows = M - m < 4 ? M - m : 4;
        float b4[4];
        for (int i = 0; i < 4; i++) b4[i] = (bias && i < rows) ? bias[m + i] : 0.0f;
        const float *ap = Ap + (size_t)m * K;
        for (int n = 0; n < N; n += 8) {
            int full = rows == 4 && n + 8 <= N;
            float *c = full ? C + (size_t)m * ldc + n : tile;
            int l = full ? ldc : 8;
            const float *bp = Bp + (size_t)n * K;
            const float *r = R ? R + (size_t)m * ldc + n : 0;
            if (R && !full) {
                int cols = N - n < 8 ? N - n : 8;
                for (int i = 0; i < 32; i++) rtile[i] = 0;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) rtile[i * 8 + j] = r[(size_t)i * ldc + j];
                r = rtile;
            }
            int k = 0;
            do {
                int steps = K - k < MK_STEPS ? K - k : MK_STEPS;
                int last = k + steps >= K;
                mk4x8(steps, ap + (size_t)4 * k, bp + (size_t)8 * k, c, l, k == 0 ? b4 : 0,
                      last ? r : 0, last ? &act : 0);
                k += steps;
            } while (k < K);
            if (!full) {
                int cols = N - n < 8 ? N - n : 8;
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++) C[(size_t)(m + i) * ldc + n + j] = tile[i * 8 + j];
            }
        }
    }
}

/* General GEMM: A with any strides, B rows contiguous (ldb), C contiguous rows. */
static void gemm_general(int M, int N, int K, const float *A, int sam, int sak,
                         const float *B, int ldb, float *C, int ldc,
                         const float *bias, int sbm, int sbn, float alpha, float beta, act_t act) {
    for (int m = 0; m < M; m++) {
        float *c = C + (size_t)m * ldc;
        for (int n = 0; n < N; n++) c[n] = 0;
        const float *a = A + (size_t)m * sam;
        int k = 0;
        /* four rows of B a pass, so each vector of C is loaded and stored once for four
         * products (a classifier's 1 x K by K x N is all passes); the same additions in
         * the same order as one row a pass */
        for (; k + 4 <= K; k += 4) {
            float a0 = a[(size_t)k * sak], a1 = a[(size_t)(k + 1) * sak];
            float a2 = a[(size_t)(k + 2) * sak], a3 = a[(size_t)(k + 3) * sak];
            const float *b0 = B + (size_t)k * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
            v128_t s0 = wasm_f32x4_splat(a0), s1 = wasm_f32x4_splat(a1);
            v128_t s2 = wasm_f32x4_splat(a2), s3 = wasm_f32x4_splat(a3);
            int n = 0;
            for (; n + 4 <= N; n += 4) {
                v128_t v = wasm_f32x4_add(wasm_v128_load(c + n), wasm_f32x4_mul(s0, wasm_v128_load(b0 + n)));
                v = wasm_f32x4_add(v, wasm_f32x4_mul(s1, wasm_v128_load(b1 + n)));
                v = wasm_f32x4_add(v, wasm_f32x4_mul(s2, wasm_v128_load(b2 + n)));
                wasm_v128_store(c + n, wasm_f32x4_add(v, wasm_f32x4_mul(s3, wasm_v128_load(b3 + n))));
            }
            for (; n < N; n++) c[n] = c[n] + a0 * b0[n] + a1 * b1[n] + a2 * b2[n] + a3 * b3[n];
        }
        for (; k < K; k++) {
            float av = a[(size_t)k * sak];
            const float *b = B + (size_t)k * ldb;
            v128_t s = wasm_f32x4_splat(av);
            int n = 0;
            for (; n + 4 <= N; n += 4)
                wasm_v128_store(c + n, wasm_f32x4_add(wasm_v128_load(c + n),
                                                      wasm_f32x4_mul(s, wasm_v128_load(b + n))));
            for (; n < N; n++) c[n] += av * b[n];
        }
        for (int n = 0; n < N; n++) {
            float v = alpha * c[n];
            if (bias) v += beta * bias[(size_t)m * sbm + (size_t)n * sbn];
            c[n] = sact(v, act);
        }
    }
}

/* ---------------------------------------------------------------- ops */
enum {
    OP_CONV = 1, OP_GEMM = 2, OP_POOL = 3, OP_ELT = 4, OP_SOFTMAX = 5, OP_REDUCE = 6,
    OP_ARG = 7, OP_GATHER = 8, OP_TREES = 9, OP_FILL = 10, OP_TEXT = 11, OP_COUPLE = 12,
};

static act_t read_act(const int32_t *p) {
    act_t a; a.act = p[0];
    union { int32_t i; float f; } u;
    u.i = p[1]; a.alpha = u.f; u.i = p[2]; a.beta = u.f;
    return a;
}
static float as_f(int32_t i) { union { int32_t i; float f; } u = {i}; return u.f; }

/* The input planes with their padding made real (zeros around the copy), so the
 * loops that read them check no bounds. Only the border is zeroed. */
static void pad_input(const float *x, float *padded, int C, int H, int W, int Hp, int Wp,
                      int pt, int pl) {
    /* explicit loops: memory.fill and memory.copy are calls into the engine, costly for rows */
    v128_t z = wasm_f32x4_splat(0.0f);
    for (int c = 0; c < C; c++) {
        float *plane = padded + (size_t)c * Hp * Wp;
        const float *from = x + (size_t)c * H * W;
        for (int h = 0; h < Hp; h++) {
            float *to = plane + (size_t)h * Wp;
            int w = 0;
            if (h < pt || h >= pt + H) {
                for (; w + 4 <= Wp; w += 4) wasm_v128_store(to + w, z);
                for (; w < Wp; w++) to[w] = 0;
                continue;
            }
            const float *row = from + (size_t)(h - pt) * W;
            for (; w < pl; w++) to[w] = 0;
            int i = 0;
            for (; i + 4 <= W; i += 4) wasm_v128_store(to + pl + i, wasm_v128_load(row + i));
            for (; i < W; i++) to[pl + i] = row[i];
            for (w = pl + W; w < Wp; w++) to[w] = 0;
        }
    }
}

/* ---------------------------------------------------------------- Winograd F(2x2, 3x3)
 * A 3x3 stride-1 convolution as Y = A^T [U . V] A per 2x2 output tile, U = G g G^T
 * (done by the planner, packed per transform position xi = 4a+b as a GEMM's A,
 * [16][M/4][C][4]), V = B^T d B of the tile's 4x4 input patch: 16 GEMMs of M x C by
 * C x tiles instead of one of M x 9C, 2.25x fewer multiply-adds.
 *
 * Tiles lie TW4 to a tile row (a multiple of 4: a vector holds 4 tiles side by
 * side) and are done TB at a time (a multiple of 8, so that V and the products
 * stay in cache). Both are kept with the 16 positions of 8 tiles interleaved,
 * so that a transform reads or writes all 16 at fixed offsets from one pointer
 * (with 16 pointers Cranelift spills most of them):
 *   V[t/8][c][xi][t%8] (the GEMM's B, a step of 128 floats), and
 *   X[m][t/8][xi][t%8] (its C: row stride 16*TB, a panel every 128 floats). */
#define WPANEL 128

__attribute__((noinline))
static void wino_input(const float *padded, int C, int Hp, int Wp, int TW4, int t0, int tb,
                       float *V) {
    for (int t = t0; t < t0 + tb; t += 4) {
        int ty = t / TW4, tx = t % TW4;
        float *v = V + (size_t)((t - t0) >> 3) * C * WPANEL + ((t - t0) & 7);
        const float *base = padded + (size_t)2 * ty * Wp + 2 * tx;
        for (int c = 0; c < C; c++, v += WPANEL, base += (size_t)Hp * Wp) {
            /* row i of 4 tiles' patches: column j of tile k at base + i*Wp + 2k + j */
#define WROW(i, u0, u1, u2, u3) do { \
                const float *r_ = base + (size_t)(i) * Wp; \
                v128_t l0 = wasm_v128_load(r_), l1 = wasm_v128_load(r_ + 4); \
                v128_t l2 = wasm_v128_load(r_ + 2), l3 = wasm_v128_load(r_ + 6); \
                v128_t d0 = wasm_i32x4_shuffle(l0, l1, 0, 2, 4, 6), d1 = wasm_i32x4_shuffle(l0, l1, 1, 3, 5, 7); \
                v128_t d2 = wasm_i32x4_shuffle(l2, l3, 0, 2, 4, 6), d3 = wasm_i32x4_shuffle(l2, l3, 1, 3, 5, 7); \
                u0 = wasm_f32x4_sub(d0, d2); u1 = wasm_f32x4_add(d1, d2); \
                u2 = wasm_f32x4_sub(d2, d1); u3 = wasm_f32x4_sub(d1, d3); } while (0)
            v128_t a0, a1, a2, a3, b0, b1, b2, b3, e0, e1, e2, e3;
            WROW(1, a0, a1, a2, a3);
            WROW(2, b0, b1, b2, b3);
            /* rows of B^T: (d0 - d2, d1 + d2, d2 - d1, d1 - d3) */
            wasm_v128_store(v + 32, wasm_f32x4_add(a0, b0));
            wasm_v128_store(v + 40, wasm_f32x4_add(a1, b1));
            wasm_v128_store(v + 48, wasm_f32x4_add(a2, b2));
            wasm_v128_store(v + 56, wasm_f32x4_add(a3, b3));
            wasm_v128_store(v + 64, wasm_f32x4_sub(b0, a0));
            wasm_v128_store(v + 72, wasm_f32x4_sub(b1, a1));
            wasm_v128_store(v + 80, wasm_f32x4_sub(b2, a2));
            wasm_v128_store(v + 88, wasm_f32x4_sub(b3, a3));
            WROW(0, e0, e1, e2, e3);
            wasm_v128_store(v, wasm_f32x4_sub(e0, b0));
            wasm_v128_store(v + 8, wasm_f32x4_sub(e1, b1));
            wasm_v128_store(v + 16, wasm_f32x4_sub(e2, b2));
            wasm_v128_store(v + 24, wasm_f32x4_sub(e3, b3));
            WROW(3, e0, e1, e2, e3);
            wasm_v128_store(v + 96, wasm_f32x4_sub(a0, e0));
            wasm_v128_store(v + 104, wasm_f32x4_sub(a1, e1));
            wasm_v128_store(v + 112, wasm_f32x4_sub(a2, e2));
            wasm_v128_store(v + 120, wasm_f32x4_sub(a3, e3));
#undef WROW
        }
    }
}

/* The 16 products: for each position, U[xi] (M x C) times V[xi] (C x tb), each B
 * panel (8 tiles) kept in cache for every block of 4 output channels. */
static void wino_gemm(int M, int C, int tb, const float *U, const float *V, float *X, int TB) {
    int M4 = (M + 3) & ~3, ldx = 16 * TB;
    float tile[32];
    static const float zero4[4] = {0, 0, 0, 0};
    for (int xi = 0; xi < 16; xi++) {
        const float *A = U + (size_t)xi * M4 * C;
        for (int q = 0; q < tb / 8; q++) {
            const float *bp = V + (size_t)q * C * WPANEL + xi * 8;
            float *cq = X + (size_t)q * WPANEL + xi * 8;
            for (int m = 0; m < M; m += 4) {
                int rows = M - m < 4 ? M - m : 4;
                float *c = rows == 4 ? cq + (size_t)m * ldx : tile;
                int l = rows == 4 ? ldx : 8;
                int k = 0;
                do {
                    int steps = C - k < MK_STEPS ? C - k : MK_STEPS;
                    mk4x8_wino(steps, A + (size_t)m * C + 4 * k, bp + (size_t)WPANEL * k, c, l,
                               k == 0 ? zero4 : 0, 0, 0);
                    k += steps;
                } while (k < C);
                for (int i = 0; i < rows && rows < 4; i++)
                    for (int j = 0; j < 8; j++) cq[(size_t)(m + i) * ldx + j] = tile[i * 8 + j];
            }
        }
    }
}

/* Y = act(A^T X A + bias + R), for each output channel and tile (R: a residual laid
 * out as Y, or 0); tiles past the output's edge are dropped. */
__attribute__((noinline))
static void wino_output(const float *X, int M, int TB, int t0, int tb, int TW4,
                        const float *bias, const float *R, act_t act, float *y, int OH, int OW) {
    for (int m = 0; m < M; m++) {
        float *ym = y + (size_t)m * OH * OW;
        const float *rm = R ? R + (size_t)m * OH * OW : 0;
        const float *xm = X + (size_t)m * 16 * TB;
        for (int t = t0; t < t0 + tb; t += 4) {
            const float *q = xm + (size_t)((t - t0) >> 3) * WPANEL + ((t - t0) & 7);
            v128_t bv = wasm_v128_load32_splat(bias + m);
            /* rows of A^T: (m0 + m1 + m2, m1 - m2 - m3), over a then over b */
#define WCOL(b, s0, s1) do { \
                v128_t m0 = wasm_v128_load(q + 8 * (b)), m1 = wasm_v128_load(q + 8 * (4 + (b))); \
                v128_t m2 = wasm_v128_load(q + 8 * (8 + (b))), m3 = wasm_v128_load(q + 8 * (12 + (b))); \
                s0 = wasm_f32x4_add(wasm_f32x4_add(m0, m1), m2); \
                s1 = wasm_f32x4_sub(wasm_f32x4_sub(m1, m2), m3); } while (0)
            v128_t p0, p1, q0, q1, r0, r1, w0, w1;
            WCOL(0, p0, p1); WCOL(1, q0, q1); WCOL(2, r0, r1); WCOL(3, w0, w1);
#undef WCOL
            v128_t y00 = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(p0, q0), r0), bv);
            v128_t y01 = wasm_f32x4_add(wasm_f32x4_sub(wasm_f32x4_sub(q0, r0), w0), bv);
            v128_t y10 = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(p1, q1), r1), bv);
            v128_t y11 = wasm_f32x4_add(wasm_f32x4_sub(wasm_f32x4_sub(q1, r1), w1), bv);
            /* tile k's 2x2 at rows 2ty, 2ty+1 and columns 2(tx+k), 2(tx+k)+1 */
            v128_t lo0 = wasm_i32x4_shuffle(y00, y01, 0, 4, 1, 5), hi0 = wasm_i32x4_shuffle(y00, y01, 2, 6, 3, 7);
            v128_t lo1 = wasm_i32x4_shuffle(y10, y11, 0, 4, 1, 5), hi1 = wasm_i32x4_shuffle(y10, y11, 2, 6, 3, 7);
            int oy = 2 * (t / TW4), ox = 2 * (t % TW4);
            size_t at = (size_t)oy * OW + ox;
            float *o = ym + at;
            if (oy + 1 < OH && ox + 8 <= OW) {
                if (rm) {
                    lo0 = wasm_f32x4_add(lo0, wasm_v128_load(rm + at));
                    hi0 = wasm_f32x4_add(hi0, wasm_v128_load(rm + at + 4));
                    lo1 = wasm_f32x4_add(lo1, wasm_v128_load(rm + at + OW));
                    hi1 = wasm_f32x4_add(hi1, wasm_v128_load(rm + at + OW + 4));
                }
                wasm_v128_store(o, vact(lo0, act)); wasm_v128_store(o + 4, vact(hi0, act));
                wasm_v128_store(o + OW, vact(lo1, act)); wasm_v128_store(o + OW + 4, vact(hi1, act));
            } else if (oy < OH && ox < OW) {
                float tmp[16];
                wasm_v128_store(tmp, lo0); wasm_v128_store(tmp + 4, hi0);
                wasm_v128_store(tmp + 8, lo1); wasm_v128_store(tmp + 12, hi1);
                int cols = OW - ox < 8 ? OW - ox : 8, rows = OH - oy < 2 ? OH - oy : 2;
                for (int r = 0; r < rows; r++)
                    for (int j = 0; j < cols; j++) {
                        size_t e = (size_t)r * OW + j;
                        float v = tmp[r * 8 + j];
                        o[e] = sact(rm ? v + rm[at + e] : v, act);
                    }
            }
        }
    }
}

/* p as for op_conv, then p[29..33]: V, the products X, TB, TW4 (tiles a tile row) and
 * TH (tile rows); the padded input is 2*TH+2 rows of 2*TW4+2. */
static void conv_winograd(const int32_t *p) {
    int N = p[0], C = p[1], H = p[2], W = p[3], M = p[4];
    int OH = p[7], OW = p[8], pt = p[11], pl = p[12];
    const float *x = (const float *)(uintptr_t)p[16];
    const float *U = (const float *)(uintptr_t)p[17];
    const float *bias = (const float *)(uintptr_t)p[18];
    float *y = (float *)(uintptr_t)p[19];
    act_t act = read_act(p + 20);
    float *padded = (float *)(uintptr_t)p[24];
    int Hp = p[25], Wp = p[26];
    float *V = (float *)(uintptr_t)p[29], *X = (float *)(uintptr_t)p[30];
    int TB = p[31], TW4 = p[32], TH = p[33];
    const float *res = (const float *)(uintptr_t)p[34];
    int T = TH * TW4;
    for (int n = 0; n < N; n++) {
        pad_input(x + (size_t)n * C * H * W, padded, C, H, W, Hp, Wp, pt, pl);
        for (int t0 = 0; t0 < T; t0 += TB) {
            int tb = T - t0 < TB ? T - t0 : TB;
            wino_input(padded, C, Hp, Wp, TW4, t0, tb, V);
            wino_gemm(M, C, tb, U, V, X, TB);
            wino_output(X, M, TB, t0, tb, TW4, bias, res ? res + (size_t)n * M * OH * OW : 0,
                        act, y + (size_t)n * M * OH * OW, OH, OW);
        }
    }
}

/* Fast paths, defined in their own region below ("speed"): each returns 0 when it
 * does not apply, and the general kernel runs. */
static int conv_depthwise(const int32_t *p);
static void pool_interior(const float *xc, int H, int W, int h0, int KH, int KW, int dh,
                          int dw, int sw, int pl, int mode, int cnt, int owa, int owb, float *yr);

/* The column matrices of a padded Conv read straight from its input, each tap's rows
 * and columns checked against the plane, and multiplied: no padded copy of the input,
 * whose pages (as large as the input: a stem's 3 x 230 x 230 floats) a fresh instance
 * would fault in on every call. For 8 output columns a row (OW a multiple of 8) at
 * strides 1 and 2: a panel whose taps all fall inside the row is read in vectors. */
static void conv_columns_inline_pad(const int32_t *p, const float *xg, float *col, int32_t *off,
                                    float *yg, const float *rg, const float *wg,
                                    const float *bias, act_t act, int Cg, int Mg) {
    int H = p[2], W = p[3], KH = p[5], KW = p[6], OW = p[8], sh = p[9], sw = p[10];
    int pt = p[11], pl = p[12], dh = p[13], dw = p[14], NT = p[27], P = p[7] * OW;
    int Kg = Cg * KH * KW;
    int32_t *th = off + Kg, *tw = th + Kg;  /* each tap's row and column in the window */
    for (int c = 0, k = 0; c < Cg; c++)
        for (int kh = 0; kh < KH; kh++)
            for (int kw = 0; kw < KW; kw++, k++) {
                off[k] = c * H * W;
                th[k] = kh * dh;
                tw[k] = kw * dw;
            }
    v128_t z = wasm_f32x4_splat(0.0f);
    for (int p0 = 0; p0 < P; p0 += NT) {
        int p1 = p0 + NT < P ? p0 + NT : P;
        int oh = p0 / OW, ow = p0 % OW;
        for (int q = p0; q < p1; q += 8) {
            float *d = col + (size_t)((q - p0) >> 3) * Kg * 8;
            int ih0 = oh * sh - pt, iw0 = ow * sw - pl;
            int inside = iw0 >= 0 && iw0 + (KW - 1) * dw + 7 * sw < W;
            for (int k = 0; k < Kg; k++, d += 8) {
                int ih = ih0 + th[k];
                if (ih < 0 || ih >= H) {
                    wasm_v128_store(d, z);
                    wasm_v128_store(d + 4, z);
                    continue;
                }
                const float *row = xg + off[k] + (size_t)ih * W;
                int iw = iw0 + tw[k];
                if (inside && sw == 1) {
                    wasm_v128_store(d, wasm_v128_load(row + iw));
                    wasm_v128_store(d + 4, wasm_v128_load(row + iw + 4));
                } else if (inside) {  /* as op_conv's stride 2: the last read is never used */
                    const float *from = row + iw;
                    v128_t l0 = wasm_v128_load(from), l1 = wasm_v128_load(from + 4);
                    v128_t l2 = wasm_v128_load(from + 8), l3 = wasm_v128_load(from + 12);
                    wasm_v128_store(d, wasm_i32x4_shuffle(l0, l1, 0, 2, 4, 6));
                    wasm_v128_store(d + 4, wasm_i32x4_shuffle(l2, l3, 0, 2, 4, 6));
                } else {
                    for (int j = 0; j < 8; j++) {
                        int cj = iw + j * sw;
                        d[j] = cj >= 0 && cj < W ? row[cj] : 0.0f;
                    }
                }
            }
            ow += 8;
            if (ow == OW) { ow = 0; oh++; }
        }
        gemm_packed(Mg, p1 - p0, Kg, wg, col, yg + p0, P, bias, rg ? rg + p0 : 0, act);
    }
}

/* Conv, NCHW, weights packed per group as [Mg/4][Kg][4], Kg = Cg*KH*KW.
 * p[28] = 1: Winograd (conv_winograd). p[34]: a residual laid out as the output, added
 * before the activation (0: none; never with the depthwise kernel). p[35] = 1: the
 * padding is read inline (conv_columns_inline_pad), p[24] is 0. */
__attribute__((noinline)) static void op_conv(const int32_t *p) {
    int N = p[0], C = p[1], H = p[2], W = p[3], M = p[4], KH = p[5], KW = p[6];
    int OH = p[7], OW = p[8], sh = p[9], sw = p[10], pt = p[11], pl = p[12];
    int dh = p[13], dw = p[14], G = p[15];
    const float *x = (const float *)(uintptr_t)p[16];
    const float *w = (const float *)(uintptr_t)p[17];
    const float *bias = (const float *)(uintptr_t)p[18];
    float *y = (float *)(uintptr_t)p[19];
    act_t act = read_act(p + 20);
    float *col = (float *)(uintptr_t)p[23];
    float *padded = (float *)(uintptr_t)p[24];  /* 0 when there is no padding */
    int Hp = p[25], Wp = p[26], NT = p[27];  /* NT: columns a chunk, a multiple of 8 */
    const float *res = (const float *)(uintptr_t)p[34];  /* added before act; 0: none */
    int inline_pad = p[35];  /* padding read as zeros where the taps fall, not copied */
    if (p[28]) { conv_winograd(p); return; }
    if (conv_depthwise(p)) return;
    int Cg = C / G, Mg = M / G, Kg = Cg * KH * KW, P = OH * OW;
    int Mg4 = (Mg + 3) & ~3;
    for (int n = 0; n < N; n++) {
        for (int g = 0; g < G; g++) {
            const float *xg = x + ((size_t)n * C + (size_t)g * Cg) * H * W;
            /* the input with its padding made real, so the loop below checks no bounds */
            const float *src = xg;
            int Ws = W;
            if (padded) {
                pad_input(xg, padded, Cg, H, W, Hp, Wp, pt, pl);
                src = padded;
                Ws = Wp;
            }
            int Hs = padded ? Hp : H;
            /* The column matrix, a chunk of NT columns at a time (it stays in cache and
             * touches few pages), panel-packed: element (k, p) at (p/8)*Kg*8 + k*8 + p%8. */
            float *yg = y + ((size_t)n * M + (size_t)g * Mg) * P;
            const float *rg = res ? res + ((size_t)n * M + (size_t)g * Mg) * P : 0;
            int32_t *off = (int32_t *)(col + (size_t)Kg * NT);  /* each tap's input offset */
            if (inline_pad) {
                conv_columns_inline_pad(p, xg, col, off, yg, rg, w + (size_t)g * Mg4 * Kg,
                                        bias ? bias + g * Mg : 0, act, Cg, Mg);
                continue;
            }
            {
                int k = 0;
                for (int c = 0; c < Cg; c++)
                    for (int kh = 0; kh < KH; kh++)
                        for (int kw = 0; kw < KW; kw++)
                            off[k++] = c * Hs * Ws + kh * dh * Ws + kw * dw;
            }
            for (int p0 = 0; p0 < P; p0 += NT) {
                int p1 = p0 + NT < P ? p0 + NT : P;
                int oh = p0 / OW, ow = p0 % OW;  /* then stepped, not divided */
                if (KH == 1 && KW == 1 && sh == 1 && sw == 1 && !padded) {
                    /* 1x1, stride 1, no padding: output column q reads input column q, so
                     * eight columns are eight consecutive floats whatever the row width
                     * (ResNet's 14x14 and 7x7). The last panel may read past the plane:
                     * its extra columns are computed and dropped. */
                    for (int q = p0; q < p1; q += 8) {
                        float *d = col + (size_t)((q - p0) >> 3) * Kg * 8;
                        for (int k = 0; k < Kg; k++, d += 8) {
                            const float *from = src + q + off[k];
                            wasm_v128_store(d, wasm_v128_load(from));
                            wasm_v128_store(d + 4, wasm_v128_load(from + 4));
                        }
                    }
                } else if (sw == 1 && (OW & 7) == 0) {
                    /* 8 output columns within a row at a time: each panel written in order */
                    for (int q = p0; q < p1; q += 8) {
                        const float *base = src + (size_t)oh * sh * Ws + ow;
                        float *d = col + (size_t)((q - p0) >> 3) * Kg * 8;
                        for (int k = 0; k < Kg; k++, d += 8) {
                            const float *from = base + off[k];
                            wasm_v128_store(d, wasm_v128_load(from));
                            wasm_v128_store(d + 4, wasm_v128_load(from + 4));
                        }
                        ow += 8;
                        if (ow == OW) { ow = 0; oh++; }
                    }
                } else if (sw == 2 && (OW & 7) == 0) {
                    /* the same, every other input column: 16 read, the even 8 kept (the
                     * last read is one float past the row's last tap, never used) */
                    for (int q = p0; q < p1; q += 8) {
                        const float *base = src + (size_t)oh * sh * Ws + 2 * ow;
                        float *d = col + (size_t)((q - p0) >> 3) * Kg * 8;
                        for (int k = 0; k < Kg; k++, d += 8) {
                            const float *from = base + off[k];
                            v128_t l0 = wasm_v128_load(from), l1 = wasm_v128_load(from + 4);
                            v128_t l2 = wasm_v128_load(from + 8), l3 = wasm_v128_load(from + 12);
                            wasm_v128_store(d, wasm_i32x4_shuffle(l0, l1, 0, 2, 4, 6));
                            wasm_v128_store(d + 4, wasm_i32x4_shuffle(l2, l3, 0, 2, 4, 6));
                        }
                        ow += 8;
                        if (ow == OW) { ow = 0; oh++; }
                    }
                } else {
                    int q = p0;
                    for (; q < p1; q++) {
                        const float *base = src + (size_t)oh * sh * Ws + (size_t)ow * sw;
                        float *d = col + (size_t)((q - p0) >> 3) * Kg * 8 + ((q - p0) & 7);
                        for (int k = 0; k < Kg; k++) d[(size_t)k * 8] = base[off[k]];
                        if (++ow == OW) { ow = 0; oh++; }
                    }
                    for (; (q - p0) & 7; q++) {
                        float *d = col + (size_t)((q - p0) >> 3) * Kg * 8 + ((q - p0) & 7);
                        for (int k = 0; k < Kg; k++) d[(size_t)k * 8] = 0;
                    }
                }
                gemm_packed(Mg, p1 - p0, Kg, w + (size_t)g * Mg4 * Kg, col, yg + p0, P,
                            bias ? bias + g * Mg : 0, rg ? rg + p0 : 0, act);
            }
        }
    }
}

__attribute__((noinline)) static void op_gemm(const int32_t *p) {
    int batch = p[0], M = p[1], N = p[2], K = p[3];
    const float *A = (const float *)(uintptr_t)p[4];
    int sam = p[5], sak = p[6], sab = p[7];
    const float *B = (const float *)(uintptr_t)p[8];
    int ldb = p[9], sbb = p[10];
    float *C = (float *)(uintptr_t)p[11];
    int scb = p[12];
    const float *bias = (const float *)(uintptr_t)p[13];
    int sbm = p[14], sbn = p[15];
    float alpha = as_f(p[16]), beta = as_f(p[17]);
    act_t act = read_act(p + 18);
    for (int b = 0; b < batch; b++) {
        gemm_general(M, N, K, A + (size_t)b * sab, sam, sak, B + (size_t)b * sbb, ldb,
                         C + (size_t)b * scb, N, bias, sbm, sbn, alpha, beta, act);
    }
}

__attribute__((noinline)) static void op_pool(const int32_t *p) {
    int planes = p[0], H = p[1], W = p[2], OH = p[3], OW = p[4], KH = p[5], KW = p[6];
    int sh = p[7], sw = p[8], pt = p[9], pl = p[10], pb = p[11], pr = p[12];
    int dh = p[13], dw = p[14], mode = p[15], include_pad = p[16];
    const float *x = (const float *)(uintptr_t)p[17];
    float *y = (float *)(uintptr_t)p[18];
    /* Columns [owa, owb) have every tap inside the row: pool_interior does them four at
     * a time (strides 1 and 2); the others, and any narrower row, one at a time here. */
    int owa = OW, owb = OW;
    if (sw <= 2) {
        int last = W - 1 + pl - (KW - 1) * dw;  /* the interior: ow * sw <= last */
        owa = (pl + sw - 1) / sw;
        owb = last < 0 ? 0 : last / sw + 1;
        if (owb > OW) owb = OW;
        if (owa > owb) owa = owb;
        if (owb - owa < 4) owa = owb = OW;
    }
    for (int c = 0; c < planes; c++) {
        const float *xc = x + (size_t)c * H * W;
        for (int oh = 0; oh < OH; oh++) {
            float *yr = y + ((size_t)c * OH + oh) * OW;
            int h0 = oh * sh - pt;
            if (owb > owa) {
                int rows = 0;
                for (int kh = 0; kh < KH; kh++) rows += h0 + kh * dh >= 0 && h0 + kh * dh < H;
                if (include_pad) {
                    int hs = h0 < -pt ? -pt : h0, he = h0 + (KH - 1) * dh + 1;
                    if (he > H + pb) he = H + pb;
                    rows = (he - hs + dh - 1) / dh;
                }
                pool_interior(xc, H, W, h0, KH, KW, dh, dw, sw, pl, mode, rows * KW, owa, owb, yr);
            }
            for (int ow = 0; ow < OW; ow++) {
                if (ow == owa) { ow = owb - 1; continue; }
                int w0 = ow * sw - pl;
                float acc = mode == 0 ? -__builtin_inff() : 0.0f;
                int cnt = 0;
                for (int kh = 0; kh < KH; kh++) {
                    int ih = h0 + kh * dh;
                    if (ih < 0 || ih >= H) continue;
                    const float *row = xc + (size_t)ih * W;
                    for (int kw = 0; kw < KW; kw++) {
                        int iw = w0 + kw * dw;
                        if (iw < 0 || iw >= W) continue;
                        float v = row[iw];
                        if (mode == 0) { if (v > acc || v != v) acc = v; }
                        else acc += v;
                        cnt++;
                    }
                }
                if (mode == 1) {
                    if (include_pad) {
                        int hs = h0 < -pt ? -pt : h0, ws = w0 < -pl ? -pl : w0;
                        int he = h0 + (KH - 1) * dh + 1, we = w0 + (KW - 1) * dw + 1;
                        if (he > H + pb) he = H + pb;
                        if (we > W + pr) we = W + pr;
                        cnt = ((he - hs + dh - 1) / dh) * ((we - ws + dw - 1) / dw);
                    }
                    acc = cnt ? acc / cnt : 0;
                }
                yr[ow] = acc;
            }
        }
    }
}

/* Elementwise over up to 6 dims with strides (in elements) for every operand. */
enum {
    E_COPY = 0, E_ADD, E_SUB, E_MUL, E_DIV, E_POW, E_MAX, E_MIN, E_MOD, E_FMOD,
    E_LT = 20, E_GT, E_EQ, E_LE, E_GE, E_AND, E_OR, E_XOR, E_WHERE = 30,
    E_RELU = 40, E_LEAKY, E_SIGMOID, E_TANH, E_EXP, E_LOG, E_SQRT, E_ABS, E_NEG, E_CLIP,
    E_RECIP, E_FLOOR, E_CEIL, E_ERF, E_NOT, E_CAST, E_SOFTPLUS, E_HARDSIGMOID, E_ROUND,
    E_SIGN, E_ELU, E_SELU, E_HARDSWISH, E_SIN, E_COS, E_ISNAN, E_ISINF, E_PROBIT,
};

static int64_t ld_i(const void *p, int dt) {
    switch (dt) {
    case I64: return *(const int64_t *)p;
    case BOOL: case U8: return *(const uint8_t *)p;
    case F64: return (int64_t)*(const double *)p;
    case I8: return *(const int8_t *)p;
    case I16: return *(const int16_t *)p;
    case U16: return *(const uint16_t *)p;
    case I32: return *(const int32_t *)p;
    case U32: return *(const uint32_t *)p;
    case F16: return (int64_t)half_to_float(*(const uint16_t *)p);
    }
    return (int64_t)*(const float *)p;
}
static float ld_f(const void *p, int dt) {
    if (dt == F32) return *(const float *)p;
    if (dt == F64) return (float)*(const double *)p;
    if (dt == F16) return half_to_float(*(const uint16_t *)p);
    return (float)ld_i(p, dt);
}
/* v stored as a narrow integer: the low bits, as a C cast (and onnxruntime) keeps them */
static void st_narrow(void *r, int dt, int64_t v) {
    switch (dt) {
    case I8: case U8: *(uint8_t *)r = (uint8_t)v; break;
    case I16: case U16: *(uint16_t *)r = (uint16_t)v; break;
    default: *(uint32_t *)r = (uint32_t)v;
    }
}

static float probit(float p) {  /* the inverse of the normal CDF, as ONNX-ML defines it */
    double x = 2.0 * p - 1.0, w = -d_log((1.0 - x) * (1.0 + x)), r;
    if (w < 5.0) {
        w -= 2.5;
        r = 2.81022636e-08; r = 3.43273939e-07 + r * w; r = -3.5233877e-06 + r * w;
        r = -4.39150654e-06 + r * w; r = 0.00021858087 + r * w; r = -0.00125372503 + r * w;
        r = -0.00417768164 + r * w; r = 0.246640727 + r * w; r = 1.50140941 + r * w;
    } else {
        w = __builtin_sqrt(w) - 3.0;
        r = -0.000200214257; r = 0.000100950558 + r * w; r = 0.00134934322 + r * w;
        r = -0.00367342844 + r * w; r = 0.00573950773 + r * w; r = -0.0076224613 + r * w;
        r = 0.00943887047 + r * w; r = 1.00167406 + r * w; r = 2.83297682 + r * w;
    }
    return (float)(r * x * 1.4142135623730951);
}

static float un_f(int op, float v, float a, float b) {
    switch (op) {
    case E_RELU: return v > 0 ? v : 0;
    case E_LEAKY: return v < 0 ? v * a : v;
    case E_SIGMOID: return f_sigmoid(v);
    case E_TANH: return f_tanh(v);
    case E_EXP: return (float)d_exp(v);
    case E_LOG: return (float)d_log(v);
    case E_SQRT: return __builtin_sqrtf(v);
    case E_ABS: return __builtin_fabsf(v);
    case E_NEG: return -v;
    case E_CLIP: return v < a ? a : (v > b ? b : v);
    case E_RECIP: return 1.0f / v;
    case E_FLOOR: return __builtin_floorf(v);
    case E_CEIL: return __builtin_ceilf(v);
    case E_ERF: return f_erf(v);
    case E_SOFTPLUS: return v > 20 ? v : (float)d_log(1.0 + d_exp(v));
    case E_HARDSIGMOID: { float r = a * v + b; return r < 0 ? 0 : (r > 1 ? 1 : r); }
    case E_ROUND: return __builtin_rintf(v);
    case E_SIGN: return v > 0 ? 1.0f : (v < 0 ? -1.0f : 0.0f);
    case E_ELU: return v < 0 ? (float)(a * (d_exp(v) - 1)) : v;
    case E_SELU: return v <= 0 ? (float)(b * (a * d_exp(v) - a)) : b * v;
    case E_HARDSWISH: { float r = v / 6 + 0.5f; r = r < 0 ? 0 : (r > 1 ? 1 : r); return v * r; }
    case E_PROBIT: return probit(v);
    }
    return v;
}
static float bin_f(int op, float x, float y) {
    switch (op) {
    case E_ADD: return x + y;
    case E_SUB: return x - y;
    case E_MUL: return x * y;
    case E_DIV: return x / y;
    case E_POW:
        if (y == 2.0f) return x * x;
        if (y == 1.0f) return x;
        if (y == 0.5f && x >= 0) return __builtin_sqrtf(x);
        return (float)d_pow(x, y);
    case E_MAX: return (x != x || x > y) ? x : y;
    case E_MIN: return (x != x || x < y) ? x : y;
    case E_FMOD: return f_fmod(x, y);
    case E_MOD: { float r = f_fmod(x, y); if (r != 0 && ((r < 0) != (y < 0))) r += y; return r; }
    }
    return 0;
}
static int bin_i(int op, int64_t x, int64_t y, int64_t *out) {
    switch (op) {
    case E_ADD: *out = (int64_t)((uint64_t)x + (uint64_t)y); return 0;
    case E_SUB: *out = (int64_t)((uint64_t)x - (uint64_t)y); return 0;
    case E_MUL: *out = (int64_t)((uint64_t)x * (uint64_t)y); return 0;
    case E_DIV: case E_MOD: case E_FMOD:
        if (y == 0 || (x == INT64_MIN && y == -1)) return 1;
        if (op == E_DIV) *out = x / y;
        else { int64_t r = x % y; if (op == E_MOD && r != 0 && ((r < 0) != (y < 0))) r += y; *out = r; }
        return 0;
    case E_MAX: *out = x > y ? x : y; return 0;
    case E_MIN: *out = x < y ? x : y; return 0;
    }
    return 0;
}

__attribute__((noinline)) static int op_elt(const int32_t *p) {
    int op = p[0], nin = p[1], dto = p[2], ndim = p[3];
    float a = as_f(p[4]), b = as_f(p[5]);
    const int32_t *dims = p + 6;            /* 6 */
    char *out = (char *)(uintptr_t)p[12];
    const int32_t *so = p + 13;             /* 6 */
    const char *in[3]; const int32_t *si[3]; int dti[3];
    for (int i = 0; i < 3; i++) {
        const int32_t *q = p + 19 + i * 8;
        in[i] = (const char *)(uintptr_t)q[0]; dti[i] = q[1]; si[i] = q + 2;
    }
    int eo = ESIZE[dto], e0 = ESIZE[dti[0]], e1 = ESIZE[dti[1]], e2 = ESIZE[dti[2]];
    int32_t idx[6] = {0, 0, 0, 0, 0, 0};
    int inner = dims[ndim - 1];
    int s0 = si[0][ndim - 1], s1 = si[1][ndim - 1], s2 = si[2][ndim - 1], sO = so[ndim - 1];
    int dt0 = dti[0];
    for (;;) {
        size_t oo = 0, o0 = 0, o1 = 0, o2 = 0;
        for (int d = 0; d < ndim - 1; d++) {
            oo += (size_t)idx[d] * so[d]; o0 += (size_t)idx[d] * si[0][d];
            o1 += (size_t)idx[d] * si[1][d]; o2 += (size_t)idx[d] * si[2][d];
        }
        char *po = out + oo * eo;
        const char *p0 = in[0] + o0 * e0, *p1 = in[1] + o1 * e1, *p2 = in[2] + o2 * e2;
        if (op == E_COPY || (op == E_CAST && dto == dt0)) {
            if (sO == 1 && s0 == 1) __builtin_memcpy(po, p0, (size_t)inner * eo);
            else if (eo == 4) for (int i = 0; i < inner; i++) ((int32_t *)po)[i * sO] = ((const int32_t *)p0)[i * s0];
            else if (eo == 8) for (int i = 0; i < inner; i++) ((int64_t *)po)[i * sO] = ((const int64_t *)p0)[i * s0];
            else if (eo == 2) for (int i = 0; i < inner; i++) ((int16_t *)po)[i * sO] = ((const int16_t *)p0)[i * s0];
            else for (int i = 0; i < inner; i++) po[i * sO] = p0[i * s0];
        } else if (op == E_CAST) {
            for (int i = 0; i < inner; i++) {
                const char *q = p0 + (size_t)i * s0 * e0;
                char *r = po + (size_t)i * sO * eo;
                if (dto == F32) *(float *)r = ld_f(q, dt0);
                else if (dto == F64) *(double *)r = (double)ld_f(q, dt0);
                else if (dto == F16) *(uint16_t *)r = float_to_half(ld_f(q, dt0));
                else if (dto == I64 || is_narrow_int(dto)) {
                    int64_t v;
                    if (dt0 == F32 || dt0 == F16) {
                        float f = ld_f(q, dt0);
                        v = (f != f) ? INT64_MIN : (f >= 9.2233720e18f ? INT64_MAX :
                            (f <= -9.2233720e18f ? INT64_MIN : (int64_t)f));
                    } else v = ld_i(q, dt0);
                    if (dto == I64) *(int64_t *)r = v; else st_narrow(r, dto, v);
                } else *(uint8_t *)r = (dt0 == F32 || dt0 == F16) ? (ld_f(q, dt0) != 0) : (ld_i(q, dt0) != 0);
            }
        } else if (op == E_WHERE) {
            for (int i = 0; i < inner; i++) {
                const char *src = p0[(size_t)i * s0] ? p1 + (size_t)i * s1 * e1 : p2 + (size_t)i * s2 * e2;
                __builtin_memcpy(po + (size_t)i * sO * eo, src, (size_t)eo);
            }
        } else if (op == E_NOT) {
            for (int i = 0; i < inner; i++) po[i * sO] = !p0[i * s0];
        } else if (op == E_ISNAN || op == E_ISINF) {
            for (int i = 0; i < inner; i++) {
                float v = ((const float *)p0)[i * s0];
                po[i * sO] = op == E_ISNAN ? (v != v) : (v == __builtin_inff() || v == -__builtin_inff());
            }
        } else if (op >= E_RELU) {
            if (dt0 == F32) {
                const float *x = (const float *)p0; float *y = (float *)po;
                if (op == E_RELU && s0 == 1 && sO == 1) {
                    int i = 0;
                    for (; i + 4 <= inner; i += 4)
                        wasm_v128_store(y + i, wasm_f32x4_max(wasm_v128_load(x + i), wasm_f32x4_splat(0)));
                    for (; i < inner; i++) y[i] = x[i] > 0 ? x[i] : 0;
                } else
                    for (int i = 0; i < inner; i++) y[i * sO] = un_f(op, x[i * s0], a, b);
            } else {  /* int64 abs, neg, relu, sign */
                const int64_t *x = (const int64_t *)p0; int64_t *y = (int64_t *)po;
                for (int i = 0; i < inner; i++) {
                    int64_t v = x[i * s0];
                    y[i * sO] = op == E_ABS ? (v < 0 ? -v : v) : op == E_NEG ? -v :
                                op == E_RELU ? (v > 0 ? v : 0) : op == E_SIGN ? (v > 0) - (v < 0) : v;
                }
            }
        } else if (op >= E_LT) {   /* comparisons and logic: bool out */
            for (int i = 0; i < inner; i++) {
                const char *q0 = p0 + (size_t)i * s0 * e0, *q1 = p1 + (size_t)i * s1 * e1;
                int r = 0;
                if (dt0 == F32) {
                    float x = *(const float *)q0, y = *(const float *)q1;
                    r = op == E_LT ? x < y : op == E_GT ? x > y : op == E_EQ ? x == y :
                        op == E_LE ? x <= y : x >= y;
                } else {
                    int64_t x = ld_i(q0, dt0), y = ld_i(q1, dti[1]);
                    r = op == E_LT ? x < y : op == E_GT ? x > y : op == E_EQ ? x == y :
                        op == E_LE ? x <= y : op == E_GE ? x >= y : op == E_AND ? (x && y) :
                        op == E_OR ? (x || y) : ((x != 0) != (y != 0));
                }
                po[i * sO] = (char)r;
            }
        } else if (dto == F32) {
            const float *x = (const float *)p0, *y = (const float *)p1; float *z = (float *)po;
            if (s0 == 1 && s1 == 1 && sO == 1 && op <= E_DIV) {
                int i = 0;
                for (; i + 4 <= inner; i += 4) {
                    v128_t u = wasm_v128_load(x + i), v = wasm_v128_load(y + i);
                    v128_t r = op == E_ADD ? wasm_f32x4_add(u, v) : op == E_SUB ? wasm_f32x4_sub(u, v) :
                               op == E_MUL ? wasm_f32x4_mul(u, v) : wasm_f32x4_div(u, v);
                    if (a != 0) r = wasm_f32x4_max(r, wasm_f32x4_splat(0));  /* fused Relu */
                    wasm_v128_store(z + i, r);
                }
                for (; i < inner; i++) { float r = bin_f(op, x[i], y[i]); z[i] = (a != 0 && r < 0) ? 0 : r; }
            } else if (sO == 1 && op <= E_DIV && ((s0 == 1 && s1 == 0) || (s0 == 0 && s1 == 1))) {
                /* one operand the same along the row (a per-channel scale or shift, as a
                 * BatchNormalization that follows no Conv makes): it splatted, vectors */
                const float *row = s0 ? x : y;
                v128_t k = wasm_f32x4_splat(s0 ? y[0] : x[0]);
                int i = 0;
                for (; i + 4 <= inner; i += 4) {
                    v128_t u = s0 ? wasm_v128_load(row + i) : k, v = s0 ? k : wasm_v128_load(row + i);
                    v128_t r = op == E_ADD ? wasm_f32x4_add(u, v) : op == E_SUB ? wasm_f32x4_sub(u, v) :
                               op == E_MUL ? wasm_f32x4_mul(u, v) : wasm_f32x4_div(u, v);
                    if (a != 0) r = wasm_f32x4_max(r, wasm_f32x4_splat(0));  /* fused Relu */
                    wasm_v128_store(z + i, r);
                }
                for (; i < inner; i++) {
                    float r = bin_f(op, x[i * s0], y[i * s1]);
                    z[i] = (a != 0 && r < 0) ? 0 : r;
                }
            } else
                for (int i = 0; i < inner; i++) {
                    float r = bin_f(op, x[i * s0], y[i * s1]);
                    z[i * sO] = (a != 0 && r < 0) ? 0 : r;
                }
        } else {
            const int64_t *x = (const int64_t *)p0, *y = (const int64_t *)p1; int64_t *z = (int64_t *)po;
            for (int i = 0; i < inner; i++)
                if (bin_i(op, x[i * s0], y[i * s1], z + (size_t)i * sO)) {
                    err_s("integer division by zero"); return 1;
                }
        }
        (void)nin;
        int d = ndim - 2;
        for (; d >= 0; d--) {
            if (++idx[d] < dims[d]) break;
            idx[d] = 0;
        }
        if (d < 0) break;
    }
    return 0;
}

__attribute__((noinline)) static void op_softmax(const int32_t *p) {
    int outer = p[0], n = p[1], inner = p[2], logsm = p[3];
    const float *x = (const float *)(uintptr_t)p[4];
    float *y = (float *)(uintptr_t)p[5];
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < inner; i++) {
            const float *xi = x + (size_t)o * n * inner + i;
            float *yi = y + (size_t)o * n * inner + i;
            float mx = -__builtin_inff();
            for (int k = 0; k < n; k++) if (xi[k * inner] > mx) mx = xi[k * inner];
            double sum = 0;
            for (int k = 0; k < n; k++) {
                double e = d_exp((double)xi[k * inner] - mx);
                sum += e;
                if (!logsm) yi[k * inner] = (float)e;
            }
            if (logsm) {
                double ls = d_log(sum);
                for (int k = 0; k < n; k++) yi[k * inner] = (float)((double)xi[k * inner] - mx - ls);
            } else
                for (int k = 0; k < n; k++) yi[k * inner] = (float)(yi[k * inner] / sum);
        }
}

enum { R_SUM = 0, R_MEAN, R_MAX, R_MIN, R_PROD, R_L1, R_L2, R_LOGSUMEXP, R_SUMSQ, R_LOGSUM };

__attribute__((noinline)) static void op_reduce(const int32_t *p) {
    int outer = p[0], r = p[1], inner = p[2], mode = p[3], dt = p[4];
    const char *x = (const char *)(uintptr_t)p[5];
    char *y = (char *)(uintptr_t)p[6];
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < inner; i++) {
            size_t base = (size_t)o * r * inner + i;
            if (dt == I64) {
                const int64_t *xi = (const int64_t *)x + base;
                int64_t acc = mode == R_PROD ? 1 : mode == R_MAX ? INT64_MIN : mode == R_MIN ? INT64_MAX : 0;
                for (int k = 0; k < r; k++) {
                    int64_t v = xi[(size_t)k * inner];
                    if (mode == R_MAX) { if (v > acc) acc = v; }
                    else if (mode == R_MIN) { if (v < acc) acc = v; }
                    else if (mode == R_PROD) acc *= v;
                    else if (mode == R_L1) acc += v < 0 ? -v : v;
                    else if (mode == R_SUMSQ) acc += v * v;
                    else acc += v;
                }
                if (mode == R_MEAN && r) acc /= r;
                ((int64_t *)y)[(size_t)o * inner + i] = acc;
                continue;
            }
            const float *xi = (const float *)x + base;
            double acc = mode == R_PROD ? 1 : mode == R_MAX ? -__builtin_inf() : mode == R_MIN ? __builtin_inf() : 0;
            double mx = 0;
            if (mode == R_LOGSUMEXP) {
                mx = -__builtin_inf();
                for (int k = 0; k < r; k++) if (xi[(size_t)k * inner] > mx) mx = xi[(size_t)k * inner];
            }
            for (int k = 0; k < r; k++) {
                double v = xi[(size_t)k * inner];
                switch (mode) {
                case R_MAX: if (v > acc || v != v) acc = v; break;
                case R_MIN: if (v < acc || v != v) acc = v; break;
                case R_PROD: acc *= v; break;
                case R_L1: acc += v < 0 ? -v : v; break;
                case R_L2: case R_SUMSQ: acc += v * v; break;
                case R_LOGSUMEXP: acc += d_exp(v - mx); break;
                default: acc += v;
                }
            }
            if (mode == R_MEAN) acc /= r;
            else if (mode == R_L2) acc = __builtin_sqrt(acc);
            else if (mode == R_LOGSUMEXP) acc = d_log(acc) + mx;
            else if (mode == R_LOGSUM) acc = d_log(acc);
            ((float *)y)[(size_t)o * inner + i] = (float)acc;
        }
}

__attribute__((noinline)) static void op_arg(const int32_t *p) {
    int outer = p[0], r = p[1], inner = p[2], is_min = p[3], last = p[4], dt = p[5];
    const char *x = (const char *)(uintptr_t)p[6];
    int64_t *y = (int64_t *)(uintptr_t)p[7];
    for (int o = 0; o < outer; o++)
        for (int i = 0; i < inner; i++) {
            size_t base = (size_t)o * r * inner + i;
            int best = 0;
            for (int k = 1; k < r; k++) {
                size_t a = base + (size_t)k * inner, b = base + (size_t)best * inner;
                int better;
                if (dt == F32) {
                    float u = ((const float *)x)[a], v = ((const float *)x)[b];
                    better = is_min ? (last ? u <= v : u < v) : (last ? u >= v : u > v);
                } else {
                    int64_t u = ld_i(x + a * ESIZE[dt], dt), v = ld_i(x + b * ESIZE[dt], dt);
                    better = is_min ? (last ? u <= v : u < v) : (last ? u >= v : u > v);
                }
                if (better) best = k;
            }
            y[(size_t)o * inner + i] = best;
        }
}

__attribute__((noinline)) static int op_gather(const int32_t *p) {
    int outer = p[0], axis = p[1], inner = p[2], nidx = p[3], es = p[4];
    const char *data = (const char *)(uintptr_t)p[5];
    const int64_t *idx = (const int64_t *)(uintptr_t)p[6];
    char *y = (char *)(uintptr_t)p[7];
    size_t row = (size_t)inner * es;
    for (int o = 0; o < outer; o++)
        for (int j = 0; j < nidx; j++) {
            int64_t k = idx[j];
            if (k < 0) k += axis;
            if (k < 0 || k >= axis) {  /* Gather, GatherElements, ArrayFeatureExtractor */
                err_s("an index is out of range: "); if (idx[j] < 0) err_s("-");
                err_u(idx[j] < 0 ? 0 - (uint64_t)idx[j] : (uint64_t)idx[j]);
                err_s(" for an axis of "); err_u((uint64_t)axis);
                return 1;
            }
            __builtin_memcpy(y, data + ((size_t)o * axis + (size_t)k) * row, row);
            y += row;
        }
    return 0;
}

/* Tree ensembles. Nodes: 6 words each {feature, threshold(f32), mode, true, false, leaf}
 * where leaf indexes the leaf table of {n, (target, weight)*n} or is -1. */
enum { T_LEAF = 0, T_LEQ, T_LT, T_GTE, T_GT, T_EQ, T_NEQ };
__attribute__((noinline)) static void op_trees(const int32_t *p) {
    int N = p[0], F = p[1], T = p[2], ntrees = p[3], agg = p[4];
    const float *x = (const float *)(uintptr_t)p[5];
    float *y = (float *)(uintptr_t)p[6];
    const int32_t *roots = (const int32_t *)(uintptr_t)p[7];
    const int32_t *nodes = (const int32_t *)(uintptr_t)p[8];
    const int32_t *leaves = (const int32_t *)(uintptr_t)p[9];
    const float *base = (const float *)(uintptr_t)p[10];
    float *acc = (float *)(uintptr_t)p[11];   /* scratch: 2*T floats */
    for (int n = 0; n < N; n++) {
        const float *xs = x + (size_t)n * F;
        int *seen = (int *)(acc + T);
        for (int t = 0; t < T; t++) { acc[t] = agg == 2 ? __builtin_inff() : agg == 3 ? -__builtin_inff() : 0; seen[t] = 0; }
        for (int t = 0; t < ntrees; t++) {
            int i = roots[t];
            for (;;) {
                const int32_t *nd = nodes + (size_t)i * 6;
                int mode = nd[2];
                if (mode == T_LEAF) break;
                float v = xs[nd[0]], th = as_f(nd[1]);
                int go;
                if (v != v) go = (mode >> 8) & 1;   /* missing value tracks true */
                else switch (mode & 255) {
                    case T_LEQ: go = v <= th; break;
                    case T_LT: go = v < th; break;
                    case T_GTE: go = v >= th; break;
                    case T_GT: go = v > th; break;
                    case T_EQ: go = v == th; break;
                    default: go = v != th;
                }
                i = go ? nd[3] : nd[4];
            }
            const int32_t *lf = leaves + nodes[(size_t)i * 6 + 5];
            int cnt = lf[0];
            for (int j = 0; j < cnt; j++) {
                int tg = lf[1 + 2 * j];
                float w = as_f(lf[2 + 2 * j]);
                if (agg == 2) { if (w < acc[tg]) acc[tg] = w; }
                else if (agg == 3) { if (w > acc[tg]) acc[tg] = w; }
                else acc[tg] += w;
                seen[tg] = 1;
            }
        }
        for (int t = 0; t < T; t++) {
            float v = acc[t];
            if (!seen[t] && (agg == 2 || agg == 3)) v = 0;
            if (agg == 1) v /= ntrees;
            y[(size_t)n * T + t] = v + base[t];
        }
    }
}

__attribute__((noinline)) static void op_fill(const int32_t *p) {
    int count = p[0], es = p[1];
    char *y = (char *)(uintptr_t)p[2];
    const char *v = (const char *)(p + 3);
    for (int i = 0; i < count; i++) __builtin_memcpy(y + (size_t)i * es, v, (size_t)es);
}

/* N-gram counts, as onnxruntime's TfIdfVectorizer counts them, over text or integers.
 * Text: StringNormalizer (case), Tokenizer (a character class, as skl2onnx's
 * `[a-zA-Z0-9_]+`) and TfIdfVectorizer in one pass over each string (the token tensor
 * is never made). Integers: each value of a row is a token (its 8 bytes). The n-grams
 * are found in a hash table (FNV-1a over the tokens' bytes, a NUL between tokens;
 * entries {offset, length, output index, 0} into the key bytes, length -1 when empty;
 * linear probing). Skip-grams as onnxruntime: for each distance d from 1 to skips + 1,
 * from each start, tokens d apart; unigrams only at d = 1.
 * p: rows, src (text: {address, length} a row; integers: [rows][C] int64), out
 * [rows][V], V, case before / after the tokenizer (0 none, 1 lower, 2 upper), class[256],
 * mincharnum, min and max n, mode (0 TF, 1 IDF, 2 TFIDF), table, its size (a power of
 * two), key bytes, weights or 0, max skip count, C (0: text). */
static void text_case(unsigned char *s, int n, int how) {
    for (int i = 0; i < n; i++) {
        if (how == 1 && s[i] >= 'A' && s[i] <= 'Z') s[i] = (unsigned char)(s[i] + 32);
        else if (how == 2 && s[i] >= 'a' && s[i] <= 'z') s[i] = (unsigned char)(s[i] - 32);
    }
}
/* the pool's index of the n tokens at tp[at], tp[at + d], ..., or -1 */
static int ngram_index(const int32_t *table, int tsize, const unsigned char *keys,
                       unsigned char *const *tp, const int *tl, int at, int n, int d) {
    uint32_t h = 2166136261u;
    for (int k = 0; k < n; k++) {
        const unsigned char *t = tp[at + k * d];
        if (k) h = (h ^ 0u) * 16777619u;
        for (int c = 0; c < tl[at + k * d]; c++) h = (h ^ t[c]) * 16777619u;
    }
    for (uint32_t i = h & (uint32_t)(tsize - 1);; i = (i + 1) & (uint32_t)(tsize - 1)) {
        const int32_t *e = table + (size_t)i * 4;
        if (e[1] < 0) return -1;
        const unsigned char *key = keys + e[0], *end = key + e[1];
        int same = 1;
        for (int k = 0; k < n && same; k++) {
            if (k) { if (key >= end || *key++ != 0) same = 0; }
            const unsigned char *t = tp[at + k * d];
            int tn = tl[at + k * d];
            if (same && end - key < tn) same = 0;
            for (int c = 0; same && c < tn; c++) if (key[c] != t[c]) same = 0;
            key += tn;
        }
        if (same && key == end) return e[2];
    }
}
__attribute__((noinline)) static int op_text(const int32_t *p) {
    int rows = p[0], V = p[3], before = p[4], after = p[5], minchars = p[7];
    int lo = p[8], hi = p[9], mode = p[10], tsize = p[12], skips = p[15], C = p[16];
    const uint64_t *src = (const uint64_t *)(uintptr_t)p[1];
    float *out = (float *)(uintptr_t)p[2];
    const unsigned char *cls = (const unsigned char *)(uintptr_t)p[6];
    const int32_t *table = (const int32_t *)(uintptr_t)p[11];
    const unsigned char *keys = (const unsigned char *)(uintptr_t)p[13];
    const float *w = (const float *)(uintptr_t)p[14];
    uint32_t longest = C > 0 ? (uint32_t)C : 1;
    if (!C) for (int r = 0; r < rows; r++) if ((uint32_t)(src[r] >> 32) > longest) longest = (uint32_t)(src[r] >> 32);
    /* a row's bytes (text), and its tokens: at most one a byte, or C */
    unsigned char *buf = (unsigned char *)alloc(C ? 1 : longest);
    unsigned char **tp = (unsigned char **)alloc(sizeof(unsigned char *) * (longest + 1));
    int *tl = (int *)alloc(sizeof(int) * (longest + 1));
    if (!buf || !tp || !tl) { err_s("out of memory for the n-grams of an input"); return 1; }
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * V;
        for (int j = 0; j < V; j++) o[j] = 0;
        int count = 0;
        if (C) {
            for (int i = 0; i < C; i++) { tp[i] = (unsigned char *)(src + (size_t)r * C + i); tl[i] = 8; }
            count = C;
        } else {
            uint32_t len = (uint32_t)(src[r] >> 32), i = 0;
            __builtin_memcpy(buf, (const void *)(uintptr_t)(uint32_t)src[r], len);
            text_case(buf, (int)len, before);
            while (i < len) {
                while (i < len && !cls[buf[i]]) i++;
                uint32_t start = i;
                while (i < len && cls[buf[i]]) i++;
                if (i == start || (int)(i - start) < minchars) continue;
                text_case(buf + start, (int)(i - start), after);
                tp[count] = buf + start; tl[count] = (int)(i - start); count++;
            }
        }
        int least = lo;
        for (int d = 1; d <= skips + 1; d++) {
            for (int at = 0; at + d * (least - 1) < count; at++)
                for (int n = least; n <= hi && at + d * (n - 1) < count; n++) {
                    int j = ngram_index(table, tsize, keys, tp, tl, at, n, d);
                    if (j >= 0) o[j] += 1;
                }
            if (least == 1 && ++least > hi) break;  /* unigrams once: no distance in them */
        }
        for (int j = 0; j < V; j++) {
            float c = o[j], wj = w ? w[j] : 1.0f;
            o[j] = mode == 0 ? c : mode == 1 ? (c > 0 ? wj : 0) : c * wj;
        }
    }
    return 0;
}

/* libsvm's pairwise coupling (onnxruntime's multiclass_probability): from the pairwise
 * probabilities r[i][j] (pairs i < j in order, in float32 as onnxruntime), the class
 * probabilities by its iteration, stopped as it stops.
 * p: rows, k classes, pairwise [rows][k(k-1)/2], out [rows][k], scratch (k*k + k floats). */
__attribute__((noinline)) static void op_couple(const int32_t *p) {
    int rows = p[0], k = p[1];
    const float *pr = (const float *)(uintptr_t)p[2];
    float *out = (float *)(uintptr_t)p[3];
    float *Q = (float *)(uintptr_t)p[4], *Qp = Q + (size_t)k * k;
    int pairs = k * (k - 1) / 2;
    float eps = 0.005f / (float)k;
    int max_iter = k > 100 ? k : 100;
    for (int row = 0; row < rows; row++) {
        const float *rp = pr + (size_t)row * pairs;
        float *P = out + (size_t)row * k;
        /* r[i][j] for i < j is rp's pair (i, j); r[j][i] = 1 - r[i][j] */
#define R_AT(i, j) ((i) < (j) ? rp[(i) * k - (i) * ((i) + 1) / 2 + ((j) - (i) - 1)] \
                              : 1.0f - rp[(j) * k - (j) * ((j) + 1) / 2 + ((i) - (j) - 1)])
        for (int t = 0; t < k; t++) {
            P[t] = 1.0f / (float)k;
            Q[t * k + t] = 0;
            for (int j = 0; j < t; j++) {
                float rjt = R_AT(j, t);
                Q[t * k + t] += rjt * rjt;
                Q[t * k + j] = Q[j * k + t];
            }
            for (int j = t + 1; j < k; j++) {
                float rjt = R_AT(j, t);
                Q[t * k + t] += rjt * rjt;
                Q[t * k + j] = -rjt * R_AT(t, j);
            }
        }
#undef R_AT
        for (int iter = 0; iter < max_iter; iter++) {
            float pQp = 0;
            for (int t = 0; t < k; t++) {
                Qp[t] = 0;
                for (int j = 0; j < k; j++) Qp[t] += Q[t * k + j] * P[j];
                pQp += P[t] * Qp[t];
            }
            float max_error = 0;
            for (int t = 0; t < k; t++) {
                float e = __builtin_fabsf(Qp[t] - pQp);
                if (e > max_error) max_error = e;
            }
            if (max_error < eps) break;
            for (int t = 0; t < k; t++) {
                float diff = (-Qp[t] + pQp) / Q[t * k + t];
                P[t] += diff;
                pQp = (pQp + diff * (diff * Q[t * k + t] + 2 * Qp[t])) / (1 + diff) / (1 + diff);
                for (int j = 0; j < k; j++) {
                    Qp[j] = (Qp[j] + diff * Q[t * k + j]) / (1 + diff);
                    P[j] /= (1 + diff);
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- speed
 * Fast paths of Conv and pooling for the shapes CNNs are made of (issue 21). */

/* Four input columns a stride `sw` (1 or 2) apart from `at`: stride 2 reads 8 floats
 * and keeps the even 4 (the last read may be one float past the row's last tap, never
 * used). */
static inline v128_t load_cols(const float *at, int sw) {
    v128_t v = wasm_v128_load(at);
    return sw == 2 ? wasm_i32x4_shuffle(v, wasm_v128_load(at + 4), 0, 2, 4, 6) : v;
}

/* Four pooled outputs of one row, columns ow .. ow+3, every tap inside the row.
 * Max propagates NaN as the scalar loop does. */
static inline v128_t pool4(const float *xc, int W, int h0, int KH, int KW, int dh, int dw,
                           int sw, int w0, int H, int mode) {
    v128_t acc = wasm_f32x4_splat(mode == 0 ? -__builtin_inff() : 0.0f);
    for (int kh = 0; kh < KH; kh++) {
        int ih = h0 + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const float *at = xc + (size_t)ih * W + w0;
        for (int kw = 0; kw < KW; kw++, at += dw) {
            v128_t v = load_cols(at, sw);
            acc = mode == 0 ? wasm_f32x4_max(acc, v) : wasm_f32x4_add(acc, v);
        }
    }
    return acc;
}

/* Columns [owa, owb) of one output row (at least 4): four at a time, the last four
 * overlapping the previous ones when the count is not a multiple of 4. `cnt`: the
 * divisor of an average. */
/* pool4 for a 3x3 window of three rows inside the plane, unrolled; `sw` and `mode` are
 * constants where it is called, so each combination is its own straight-line code. */
static inline __attribute__((always_inline)) void pool3x3_row(
        const float *r0, int W, int sw, int mode, v128_t div, int owa, int owb, float *yr) {
    const float *r1 = r0 + W, *r2 = r1 + W;
    for (int ow = owa;; ow += 4) {
        if (ow + 4 > owb) ow = owb - 4;
        size_t at = (size_t)ow * sw;
        v128_t a = load_cols(r0 + at, sw), b = load_cols(r0 + at + 1, sw);
        v128_t c = load_cols(r0 + at + 2, sw), d = load_cols(r1 + at, sw);
        v128_t e = load_cols(r1 + at + 1, sw), f = load_cols(r1 + at + 2, sw);
        v128_t g = load_cols(r2 + at, sw), h = load_cols(r2 + at + 1, sw);
        v128_t i = load_cols(r2 + at + 2, sw), v;
        if (mode == 0) {  /* max, NaN propagating as pool4's */
            v = wasm_f32x4_max(wasm_f32x4_max(wasm_f32x4_max(a, b), wasm_f32x4_max(c, d)),
                               wasm_f32x4_max(wasm_f32x4_max(e, f), wasm_f32x4_max(g, h)));
            v = wasm_f32x4_max(v, i);
        } else {  /* summed in pool4's order: the same roundings */
            v = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(
                    wasm_f32x4_add(wasm_f32x4_splat(0.0f), a), b), c), d), e), f);
            v = wasm_f32x4_div(wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(v, g), h), i), div);
        }
        wasm_v128_store(yr + ow, v);
        if (ow + 4 >= owb) break;
    }
}

static void pool_interior(const float *xc, int H, int W, int h0, int KH, int KW, int dh,
                          int dw, int sw, int pl, int mode, int cnt, int owa, int owb,
                          float *yr) {
    v128_t div = wasm_f32x4_splat((float)(cnt ? cnt : 1));
    if (KH == 3 && KW == 3 && dh == 1 && dw == 1 && h0 >= 0 && h0 + 3 <= H && cnt) {
        const float *r0 = xc + (size_t)h0 * W - pl;
        if (sw == 1 && mode == 0) pool3x3_row(r0, W, 1, 0, div, owa, owb, yr);
        else if (sw == 1) pool3x3_row(r0, W, 1, 1, div, owa, owb, yr);
        else if (mode == 0) pool3x3_row(r0, W, 2, 0, div, owa, owb, yr);
        else pool3x3_row(r0, W, 2, 1, div, owa, owb, yr);
        return;
    }
    for (int ow = owa;; ow += 4) {
        if (ow + 4 > owb) ow = owb - 4;
        v128_t v = pool4(xc, W, h0, KH, KW, dh, dw, sw, ow * sw - pl, H, mode);
        if (mode == 1) v = cnt ? wasm_f32x4_div(v, div) : wasm_f32x4_splat(0.0f);
        wasm_v128_store(yr + ow, v);
        if (ow + 4 >= owb) break;
    }
}

/* One channel of a 3x3 depthwise Conv (MobileNet's and ShuffleNet's): the nine taps
 * unrolled with their weights in registers, four output columns at a time. */
static void depthwise3x3(const float *src, int Ws, const float *wg, v128_t b, act_t act,
                         int sh, int sw, int OH, int OW, float *yg) {
    v128_t w0 = wasm_v128_load32_splat(wg), w1 = wasm_v128_load32_splat(wg + 4);
    v128_t w2 = wasm_v128_load32_splat(wg + 8), w3 = wasm_v128_load32_splat(wg + 12);
    v128_t w4 = wasm_v128_load32_splat(wg + 16), w5 = wasm_v128_load32_splat(wg + 20);
    v128_t w6 = wasm_v128_load32_splat(wg + 24), w7 = wasm_v128_load32_splat(wg + 28);
    v128_t w8 = wasm_v128_load32_splat(wg + 32);
    for (int oh = 0; oh < OH; oh++) {
        const float *r0 = src + (size_t)oh * sh * Ws, *r1 = r0 + Ws, *r2 = r1 + Ws;
        float *yr = yg + (size_t)oh * OW;
        for (int ow = 0;; ow += 4) {
            if (ow + 4 > OW) ow = OW - 4;
            size_t at = (size_t)ow * sw;
            v128_t acc = MADD(w0, load_cols(r0 + at, sw), b);
            acc = MADD(w1, load_cols(r0 + at + 1, sw), acc);
            acc = MADD(w2, load_cols(r0 + at + 2, sw), acc);
            acc = MADD(w3, load_cols(r1 + at, sw), acc);
            acc = MADD(w4, load_cols(r1 + at + 1, sw), acc);
            acc = MADD(w5, load_cols(r1 + at + 2, sw), acc);
            acc = MADD(w6, load_cols(r2 + at, sw), acc);
            acc = MADD(w7, load_cols(r2 + at + 1, sw), acc);
            acc = MADD(w8, load_cols(r2 + at + 2, sw), acc);
            wasm_v128_store(yr + ow, vact(acc, act));
            if (ow + 4 >= OW) break;
        }
    }
}

/* Depthwise Conv (one input and one output channel a group): a direct convolution,
 * four output columns at a time, from the padded plane; the weights stay packed as
 * op_conv's ([1][K][4], the first of each 4 the filter's). Strides 1 and 2. */
static int conv_depthwise(const int32_t *p) {
    int N = p[0], C = p[1], H = p[2], W = p[3], M = p[4], KH = p[5], KW = p[6];
    int OH = p[7], OW = p[8], sh = p[9], sw = p[10], pt = p[11], pl = p[12];
    int dh = p[13], dw = p[14], G = p[15];
    if (G != C || M != C || OW < 4 || (sw != 1 && sw != 2)) return 0;
    const float *x = (const float *)(uintptr_t)p[16];
    const float *w = (const float *)(uintptr_t)p[17];
    const float *bias = (const float *)(uintptr_t)p[18];
    float *y = (float *)(uintptr_t)p[19];
    act_t act = read_act(p + 20);
    float *padded = (float *)(uintptr_t)p[24];
    int Hp = p[25], Wp = p[26], K = KH * KW;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < C; g++) {
            const float *src = x + ((size_t)n * C + g) * H * W;
            int Ws = W;
            if (padded) {
                pad_input(src, padded, 1, H, W, Hp, Wp, pt, pl);
                src = padded;
                Ws = Wp;
            }
            const float *wg = w + (size_t)g * 4 * K;
            v128_t b = wasm_f32x4_splat(bias ? bias[g] : 0.0f);
            float *yg = y + ((size_t)n * C + g) * OH * OW;
            if (KH == 3 && KW == 3 && dh == 1 && dw == 1) {
                depthwise3x3(src, Ws, wg, b, act, sh, sw, OH, OW, yg);
                continue;
            }
            for (int oh = 0; oh < OH; oh++) {
                const float *row = src + (size_t)oh * sh * Ws;
                for (int ow = 0;; ow += 4) {
                    if (ow + 4 > OW) ow = OW - 4;
                    v128_t acc = b;
                    const float *wk = wg;
                    for (int kh = 0; kh < KH; kh++) {
                        const float *at = row + (size_t)kh * dh * Ws + (size_t)ow * sw;
                        for (int kw = 0; kw < KW; kw++, at += dw, wk += 4)
                            acc = MADD(wasm_v128_load32_splat(wk), load_cols(at, sw), acc);
                    }
                    wasm_v128_store(yg + (size_t)oh * OW + ow, vact(acc, act));
                    if (ow + 4 >= OW) break;
                }
            }
        }
    return 1;
}

#ifdef WQ_PROFILE
/* Built only by `build_kernels --profile` (bench/model_profile.py): nanoseconds per
 * instruction of the last pred(), from WASI's monotonic clock. */
__attribute__((import_module("wasi_snapshot_preview1"), import_name("clock_time_get")))
int32_t clock_time_get(int32_t id, int64_t precision, int64_t *time);
#define PROF_MAX 4096
static int64_t prof_ns[PROF_MAX];
EXPORT("prof_ns") int32_t prof_ns_at(void) { return (int32_t)(uintptr_t)prof_ns; }
static int64_t prof_now(void) { int64_t t = 0; clock_time_get(1, 1, &t); return t; }
#endif

static int run_plan(const header_t *h) {
    const int32_t *pc = (const int32_t *)((const char *)h + h->code_off);
    const int32_t *end = pc + h->code_words;
#ifdef WQ_PROFILE
    int prof_i = 0;
#endif
    while (pc < end) {
        int op = pc[0], len = pc[1];
        const int32_t *p = pc + 2;
        int rc = 0;
#ifdef WQ_PROFILE
        int64_t prof_t0 = prof_now();
#endif
        switch (op) {
        case OP_CONV: op_conv(p); break;
        case OP_GEMM: op_gemm(p); break;
        case OP_POOL: op_pool(p); break;
        case OP_ELT: rc = op_elt(p); break;
        case OP_SOFTMAX: op_softmax(p); break;
        case OP_REDUCE: op_reduce(p); break;
        case OP_ARG: op_arg(p); break;
        case OP_GATHER: rc = op_gather(p); break;
        case OP_TREES: op_trees(p); break;
        case OP_FILL: op_fill(p); break;
        case OP_TEXT: rc = op_text(p); break;
        case OP_COUPLE: op_couple(p); break;
        default: err_s("corrupt plan: unknown operation"); rc = 1;
        }
#ifdef WQ_PROFILE
        if (prof_i < PROF_MAX) prof_ns[prof_i++] = prof_now() - prof_t0;
#endif
        if (rc) return rc;
        pc += len;
    }
    return 0;
}

/* ---------------------------------------------------------------- JSON in */
typedef struct { const char *s; } cur_t;

static void ws(cur_t *c) { while (*c->s == ' ' || *c->s == '\n' || *c->s == '\r' || *c->s == '\t') c->s++; }

static int streq_json(const char *js, int n, const char *name) {  /* a key without escapes */
    int i = 0;
    for (; i < n; i++) if (name[i] != js[i]) return 0;
    return name[i] == 0;
}

/* Skip one JSON value; 0 on malformed input. */
static int skip_value(cur_t *c, int depth) {
    ws(c);
    char ch = *c->s;
    if (depth > 64) return 0;
    if (ch == '"') {
        c->s++;
        while (*c->s && *c->s != '"') { if (*c->s == '\\' && c->s[1]) c->s++; c->s++; }
        if (*c->s != '"') return 0;
        c->s++; return 1;
    }
    if (ch == '[' || ch == '{') {
        char close = ch == '[' ? ']' : '}';
        c->s++; ws(c);
        if (*c->s == close) { c->s++; return 1; }
        for (;;) {
            if (close == '}') {
                if (!skip_value(c, depth + 1)) return 0;
                ws(c); if (*c->s != ':') return 0; c->s++;
            }
            if (!skip_value(c, depth + 1)) return 0;
            ws(c);
            if (*c->s == ',') { c->s++; continue; }
            if (*c->s == close) { c->s++; return 1; }
            return 0;
        }
    }
    const char *st = c->s;
    while (*c->s && *c->s != ',' && *c->s != ']' && *c->s != '}' && *c->s != ' ' &&
           *c->s != '\n' && *c->s != '\r' && *c->s != '\t' && *c->s != ':') c->s++;
    return c->s > st;
}

static const double P10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                             1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static double scale10(double m, int e) {
    while (e > 22) { m *= 1e22; e -= 22; }
    while (e < -22) { m /= 1e22; e += 22; }
    return e >= 0 ? m * P10[e] : m / P10[-e];
}

/* A JSON number (or true/false) into the input's type. 0: not a number; 2: not an integer;
 * 3: an integer outside the input's type. */
static int parse_number(cur_t *c, int dt, void *out) {
    const char *s = c->s;
    if (s[0] == 't' && s[1] == 'r' && s[2] == 'u' && s[3] == 'e') { c->s += 4; goto set_one; }
    if (s[0] == 'f' && s[1] == 'a' && s[2] == 'l' && s[3] == 's' && s[4] == 'e') { c->s += 5; goto set_zero; }
    {
        int neg = 0, digits = 0, exp10 = 0, frac = 0;
        uint64_t m = 0;
        if (*s == '-') { neg = 1; s++; }
        if (s[0] == 'N' && s[1] == 'a' && s[2] == 'N') {
            c->s = s + 3;
            if (dt == F64) { *(double *)out = __builtin_nan(""); return 1; }
            if (dt == F16) { *(uint16_t *)out = 0x7e00; return 1; }
            if (dt != F32) return 2;
            *(float *)out = __builtin_nanf(""); return 1;
        }
        if (s[0] == 'I' && s[1] == 'n' && s[2] == 'f') {
            s += 3;
            if (s[0] == 'i' && s[1] == 'n' && s[2] == 'i' && s[3] == 't' && s[4] == 'y') s += 5;
            c->s = s;
            if (dt == F64) { *(double *)out = neg ? -__builtin_inf() : __builtin_inf(); return 1; }
            if (dt == F16) { *(uint16_t *)out = neg ? 0xfc00 : 0x7c00; return 1; }
            if (dt != F32) return 2;
            *(float *)out = neg ? -__builtin_inff() : __builtin_inff(); return 1;
        }
        while (*s >= '0' && *s <= '9') {
            if (m < 1000000000000000000ull) { m = m * 10 + (uint64_t)(*s - '0'); digits++; }
            else exp10++;
            s++;
        }
        int intdigits = digits;
        if (*s == '.') {
            s++;
            while (*s >= '0' && *s <= '9') {
                if (*s != '0') frac = 1;
                if (m < 1000000000000000000ull) { m = m * 10 + (uint64_t)(*s - '0'); exp10--; digits++; }
                s++;
            }
        }
        if (!digits && !intdigits) return 0;
        if (*s == 'e' || *s == 'E') {
            s++;
            int eneg = 0, e = 0;
            if (*s == '+' || *s == '-') { eneg = *s == '-'; s++; }
            if (!(*s >= '0' && *s <= '9')) return 0;
            while (*s >= '0' && *s <= '9') { if (e < 10000) e = e * 10 + (*s - '0'); s++; }
            exp10 += eneg ? -e : e;
        }
        c->s = s;
        if (dt == F32 || dt == F64 || dt == F16) {
            double v = m ? scale10((double)m, exp10) : 0.0;
            if (dt == F64) *(double *)out = neg ? -v : v;
            else if (dt == F16) *(uint16_t *)out = float_to_half((float)(neg ? -v : v));
            else *(float *)out = (float)(neg ? -v : v);
            return 1;
        }
        /* integers: exact, so no fraction */
        if (frac) return 2;
        while (exp10 < 0) { if (m % 10) return 2; m /= 10; exp10++; }
        while (exp10 > 0) { if (m > 922337203685477580ull) return 2; m *= 10; exp10--; }
        if (m > 9223372036854775807ull + (uint64_t)neg) return 2;
        if (dt == I64) { *(int64_t *)out = neg ? (int64_t)(0 - m) : (int64_t)m; return 1; }
        if (is_narrow_int(dt)) {  /* in the type's range, or refused (3) */
            int64_t v = neg ? (int64_t)(0 - m) : (int64_t)m;
            int64_t lo = dt == I8 ? -128 : dt == I16 ? -32768 : dt == I32 ? INT32_MIN : 0;
            int64_t hi = dt == I8 ? 127 : dt == U8 ? 255 : dt == I16 ? 32767 : dt == U16 ? 65535 :
                         dt == I32 ? INT32_MAX : (int64_t)UINT32_MAX;
            if (v < lo || v > hi) return 3;
            st_narrow(out, dt, v);
            return 1;
        }
        if (m > 1) return 2;
        *(uint8_t *)out = (uint8_t)m;
        return 1;
    }
set_one:
    if (dt == F64) *(double *)out = 1.0; else if (dt == F32) *(float *)out = 1.0f; else if (dt == I64) *(int64_t *)out = 1;
    else if (dt == F16) *(uint16_t *)out = 0x3c00; else if (is_narrow_int(dt)) st_narrow(out, dt, 1); else *(uint8_t *)out = 1;
    return 1;
set_zero:
    if (dt == F64) *(double *)out = 0.0; else if (dt == F32) *(float *)out = 0.0f; else if (dt == I64) *(int64_t *)out = 0;
    else if (dt == F16) *(uint16_t *)out = 0; else if (is_narrow_int(dt)) st_narrow(out, dt, 0); else *(uint8_t *)out = 0;
    return 1;
}

static void err_shape(const io_t *io) {
    err_s(" (shape ");
    for (int d = 0; d < io->ndim; d++) { if (d) err_s("x"); err_u((uint64_t)io->dims[d]); }
    if (!io->ndim) err_s("scalar");
    err_s(", "); err_s(TNAME[io->dtype]); err_s(")");
}

static int bad_input(const io_t *io, const char *what) {
    err_s("input '"); err_s(io->name); err_s("': "); err_s(what);
    err_s("; the model expects "); err_u((uint64_t)io->count); err_s(" ");
    err_s(TNAME[io->dtype]); err_s(io->count == 1 ? " value" : " values");
    err_shape(io);
    err_s(", as nested or flat JSON arrays, or base64 of the raw little-endian tensor with \"type\": \"raw\"");
    return fail();
}

/* A JSON string (\" \\ \/ escapes) to its index in the input's vocabulary, or -1.
 * 0: not a string. */
static int parse_category(cur_t *c, const io_t *io, int64_t *out) {
    if (*c->s != '"') return 0;
    char buf[256];
    int n = 0, fits = 1;
    c->s++;
    while (*c->s && *c->s != '"') {
        char ch = *c->s++;
        if (ch == '\\') {
            if (!*c->s) return 0;
            ch = *c->s++;
            if (ch != '"' && ch != '\\' && ch != '/') fits = 0;  /* other escapes: no category */
        }
        if (n < (int)sizeof buf - 1) buf[n++] = ch; else fits = 0;
    }
    if (*c->s != '"') return 0;
    c->s++;
    buf[n] = 0;
    *out = -1;
    const char *v = (const char *)(uintptr_t)io->pad[0];
    for (int32_t i = 0; fits && i < io->pad[1]; i++) {
        int k = 0;
        while (v[k] && v[k] == buf[k]) k++;
        if (!v[k] && !buf[k]) { *out = i; break; }
        while (*v) v++;
        v++;
    }
    return 1;
}

/* A JSON string for the text kernel: unescaped in place in the request (never longer
 * than its JSON form) and stored as {address, length}. 0: not a string. */
static int parse_text(cur_t *c, uint64_t *out) {
    if (*c->s != '"') return 0;
    unsigned char *w = (unsigned char *)(uintptr_t)++c->s, *start = w;
    const char *r = c->s;
    while (*r && *r != '"') {
        char ch = *r++;
        if (ch != '\\') { *w++ = (unsigned char)ch; continue; }
        ch = *r++;
        uint32_t u = 0;
        switch (ch) {
        case 'n': *w++ = '\n'; continue;
        case 't': *w++ = '\t'; continue;
        case 'r': *w++ = '\r'; continue;
        case 'b': *w++ = '\b'; continue;
        case 'f': *w++ = '\f'; continue;
        case '"': case '\\': case '/': *w++ = (unsigned char)ch; continue;
        case 'u': break;
        default: return 0;
        }
        for (int q = 0; q < 4; q++, r++) {
            char d = *r;
            int v = d >= '0' && d <= '9' ? d - '0' : d >= 'a' && d <= 'f' ? d - 'a' + 10 :
                    d >= 'A' && d <= 'F' ? d - 'A' + 10 : -1;
            if (v < 0) return 0;
            u = u * 16 + (uint32_t)v;
        }
        if (u >= 0xd800 && u < 0xdc00 && r[0] == '\\' && r[1] == 'u') {  /* a surrogate pair */
            uint32_t lo = 0; int ok = 1;
            for (int q = 0; q < 4; q++) {
                char d = r[2 + q];
                int v = d >= '0' && d <= '9' ? d - '0' : d >= 'a' && d <= 'f' ? d - 'a' + 10 :
                        d >= 'A' && d <= 'F' ? d - 'A' + 10 : -1;
                if (v < 0) { ok = 0; break; }
                lo = lo * 16 + (uint32_t)v;
            }
            if (ok && lo >= 0xdc00 && lo < 0xe000) { u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00); r += 6; }
        }
        if (u < 0x80) *w++ = (unsigned char)u;
        else if (u < 0x800) { *w++ = (unsigned char)(0xc0 | (u >> 6)); *w++ = (unsigned char)(0x80 | (u & 63)); }
        else if (u < 0x10000) {
            *w++ = (unsigned char)(0xe0 | (u >> 12)); *w++ = (unsigned char)(0x80 | ((u >> 6) & 63));
            *w++ = (unsigned char)(0x80 | (u & 63));
        } else {
            *w++ = (unsigned char)(0xf0 | (u >> 18)); *w++ = (unsigned char)(0x80 | ((u >> 12) & 63));
            *w++ = (unsigned char)(0x80 | ((u >> 6) & 63)); *w++ = (unsigned char)(0x80 | (u & 63));
        }
    }
    if (*r != '"') return 0;
    c->s = r + 1;
    *out = (uint64_t)(uint32_t)(uintptr_t)start | ((uint64_t)(uint32_t)(w - start) << 32);
    return 1;
}

/* Numbers (or categories) in nested arrays, in order, into the input's buffer. */
static int read_array(cur_t *c, const io_t *io, int *got, int depth) {
    ws(c);
    if (*c->s != '[') {
        if (*got >= io->count) { (*got)++; return skip_value(c, depth) ? 1 : 0; }
        char *at = (char *)io->addr + (size_t)*got * ESIZE[io->dtype];
        int r = io->dtype == STR ? parse_category(c, io, (int64_t *)at) :
                io->dtype == TXT ? parse_text(c, (uint64_t *)at) : parse_number(c, io->dtype, at);
        if (r == 0) return 0;
        if (r >= 2) return r;
        (*got)++;
        return 1;
    }
    if (depth > 32) return 0;
    c->s++; ws(c);
    if (*c->s == ']') { c->s++; return 1; }
    for (;;) {
        int r = read_array(c, io, got, depth + 1);
        if (r != 1) return r;
        ws(c);
        if (*c->s == ',') { c->s++; continue; }
        if (*c->s == ']') { c->s++; return 1; }
        return 0;
    }
}

/* base64 (standard or URL-safe alphabet) digit values; 64 = not a digit */
static unsigned char B64[256];
static void b64_init(void) {
    if (B64['A'] == 0 && B64[0] == 64) return;
    for (int i = 0; i < 256; i++) B64[i] = 64;
    for (int i = 0; i < 26; i++) { B64['A' + i] = (unsigned char)i; B64['a' + i] = (unsigned char)(26 + i); }
    for (int i = 0; i < 10; i++) B64['0' + i] = (unsigned char)(52 + i);
    B64['+'] = B64['-'] = 62; B64['/'] = B64['_'] = 63;
}
static int b64v(char ch) { int v = B64[(unsigned char)ch]; return v == 64 ? -1 : v; }

static int read_raw(cur_t *c, const io_t *io) {
    c->s++;  /* opening quote */
    size_t want = (size_t)io->count * ESIZE[io->dtype], n = 0;
    uint32_t acc = 0; int bits = 0;
    unsigned char *out = (unsigned char *)io->addr;
    b64_init();
    /* four digits at a time while they are all digits and the tensor has room */
    const unsigned char *u = (const unsigned char *)c->s;
    while (n + 3 <= want) {
        unsigned a = B64[u[0]], b = B64[u[1]], d = B64[u[2]], e = B64[u[3]];
        if ((a | b | d | e) & 64) break;
        uint32_t v = (a << 18) | (b << 12) | (d << 6) | e;
        out[n] = (unsigned char)(v >> 16); out[n + 1] = (unsigned char)(v >> 8); out[n + 2] = (unsigned char)v;
        n += 3; u += 4;
    }
    c->s = (const char *)u;
    while (*c->s && *c->s != '"') {
        char ch = *c->s++;
        if (ch == '=' || ch == '\\' || ch == '\n' || ch == '\r') {
            if (ch == '\\' && *c->s) c->s++;  /* an escaped newline in the JSON string */
            continue;
        }
        int v = b64v(ch);
        if (v < 0) return bad_input(io, "the string is not base64");
        acc = (acc << 6) | (uint32_t)v; bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n < want) out[n] = (unsigned char)(acc >> bits);
            n++;
        }
    }
    if (*c->s != '"') return bad_input(io, "unterminated string");
    c->s++;
    if (n != want) {
        err_s("input '"); err_s(io->name); err_s("': the raw tensor has "); err_u(n);
        err_s(" bytes, the model expects "); err_u(want); err_s(" (");
        err_u((uint64_t)io->count); err_s(" x "); err_s(TNAME[io->dtype]); err_s(")");
        err_shape(io);
        return fail();
    }
    return 0;
}

static int read_input(cur_t *c, const io_t *io) {
    ws(c);
    if (*c->s == '"' && io->dtype != STR && io->dtype != TXT) return read_raw(c, io);
    int got = 0;
    int r = read_array(c, io, &got, 0);
    if (r == 2 || r == 3) {
        char what[64] = "a value is not ";
        int l = 15;
        const char *t = r == 3 ? "in the range of " : io->dtype == BOOL ? "true, false, 0 or 1" : "an integer";
        while (*t) what[l++] = *t++;
        if (r == 3) for (t = TNAME[io->dtype]; *t; ) what[l++] = *t++;
        what[l] = 0;
        return bad_input(io, what);
    }
    if (r == 0) return bad_input(io, (io->dtype == STR || io->dtype == TXT) ?
                                 "expected strings in (nested) JSON arrays" :
                                 "expected numbers in (nested) JSON arrays");
    if (got != io->count) {
        err_s("input '"); err_s(io->name); err_s("': got "); err_u((uint64_t)got);
        err_s(got == 1 ? " value" : " values"); err_s(", the model expects ");
        err_u((uint64_t)io->count); err_shape(io);
        return fail();
    }
    return 0;
}

/* ---------------------------------------------------------------- JSON out */
static char *op_;  /* output cursor */

static void out_s(const char *s) { while (*s) *op_++ = *s++; }
static void out_u(uint64_t v) {
    char t[24]; int n = 0;
    do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *op_++ = t[--n];
}
static void out_i(int64_t v) {
    if (v < 0) { *op_++ = '-'; out_u(0 - (uint64_t)v); } else out_u((uint64_t)v);
}

/* The shortest decimal that reads back to the same float32. */
static void out_f(float f) {
    if (f != f) { out_s("NaN"); return; }
    if (f == __builtin_inff()) { out_s("Infinity"); return; }
    if (f == -__builtin_inff()) { out_s("-Infinity"); return; }
    if (f == 0) { out_s((1.0f / f) < 0 ? "-0.0" : "0.0"); return; }
    double d = f;
    if (d < 0) { *op_++ = '-'; d = -d; }
    /* the decimal exponent from the binary one, then corrected by at most a step */
    union { double d; uint64_t u; } bits = {d};
    int e2 = (int)((bits.u >> 52) & 0x7ff) - 1023;
    int e = (int)__builtin_floor(e2 * 0.30102999566398120);
    while (scale10(1.0, e) > d) e--;
    while (scale10(1.0, e + 1) <= d) e++;
    /* Nine significant digits read back to any float32; the fewest that do are found
     * by halving [1, 9] (a rounding that reads back has every longer one read back
     * too), each candidate rounded from the nine in integers: about four checks a
     * number where trying 1, 2, ... took up to nine scalings of the double. */
    uint64_t m9 = (uint64_t)__builtin_rint(scale10(d, 8 - e));
    if (m9 >= 1000000000u) { m9 = (uint64_t)__builtin_rint(scale10(d, 7 - e)); e++; }
    uint64_t m = m9;
    int prec = 9, ee9 = e, lo = 1, hi = 9;
    while (lo < hi) {
        int mid = (lo + hi) / 2, ee = e;
        uint64_t q = (uint64_t)P10[9 - mid], mp = (m9 + q / 2) / q;
        if (mp >= (uint64_t)P10[mid]) { mp /= 10; ee++; }
        if ((float)scale10((double)mp, ee - mid + 1) == (float)d) { hi = mid; m = mp; prec = mid; ee9 = ee; }
        else lo = mid + 1;
    }
    if (prec > 1) {  /* rounding twice (to nine, then fewer) can miss by a digit: from d */
        int ee = e;
        uint64_t mp = (uint64_t)__builtin_rint(scale10(d, prec - 2 - e));
        if (mp >= (uint64_t)P10[prec - 1]) { mp /= 10; ee++; }
        if ((float)scale10((double)mp, ee - prec + 2) == (float)d) { m = mp; prec--; ee9 = ee; }
    }
    e = ee9;
    char dig[12];
    for (int i = prec - 1; i >= 0; i--) { dig[i] = (char)('0' + m % 10); m /= 10; }
    while (prec > 1 && dig[prec - 1] == '0') prec--;
    if (e >= -5 && e < 16) {
        if (e < 0) {
            out_s("0.");
            for (int i = 0; i < -e - 1; i++) *op_++ = '0';
            for (int i = 0; i < prec; i++) *op_++ = dig[i];
        } else {
            for (int i = 0; i <= e; i++) *op_++ = i < prec ? dig[i] : '0';
            *op_++ = '.';
            if (prec > e + 1) for (int i = e + 1; i < prec; i++) *op_++ = dig[i];
            else *op_++ = '0';
        }
    } else {
        *op_++ = dig[0];
        if (prec > 1) { *op_++ = '.'; for (int i = 1; i < prec; i++) *op_++ = dig[i]; }
        *op_++ = 'e';
        if (e < 0) { *op_++ = '-'; e = -e; } else *op_++ = '+';
        if (e < 10) *op_++ = '0';
        out_u((uint64_t)e);
    }
}

/* A STR output (class labels): index v of its vocabulary (NUL-separated at pad[0], pad[1]
 * of them, the longest pad[2] bytes) as a JSON string; null if v is not one. */
static void out_label(const io_t *io, int64_t v) {
    if (v < 0 || v >= io->pad[1]) { out_s("null"); return; }
    const char *s = (const char *)(uintptr_t)io->pad[0];
    for (int64_t k = 0; k < v; k++) { while (*s) s++; s++; }
    *op_++ = '"';
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { *op_++ = '\\'; *op_++ = (char)ch; }
        else if (ch < 0x20) {
            const char *hex = "0123456789abcdef";
            out_s("\\u00"); *op_++ = hex[ch >> 4]; *op_++ = hex[ch & 15];
        } else *op_++ = (char)ch;
    }
    *op_++ = '"';
}

static void out_tensor(const io_t *io) {
    *op_++ = '[';
    for (int i = 0; i < io->count; i++) {
        if (i) { *op_++ = ','; *op_++ = ' '; }
        const char *at = (const char *)io->addr + (size_t)i * ESIZE[io->dtype];
        if (io->dtype == F32) out_f(*(const float *)at);
        else if (io->dtype == F64 || io->dtype == F16) out_f(ld_f(at, io->dtype));  /* computed in float32 */
        else if (io->dtype == BOOL) out_s(*(const uint8_t *)at ? "true" : "false");
        else if (io->dtype == STR) out_label(io, *(const int64_t *)at);
        else out_i(ld_i(at, io->dtype));
    }
    *op_++ = ']';
}

/* ---------------------------------------------------------------- the ABI */
static unsigned char *in_buf;
static char *out_buf;
static int32_t out_len;

EXPORT("_initialize") void _initialize(void) { heap_top = (uintptr_t)&__heap_base; }

/* Where the request's text can lie in the arena: `n` bytes clear of every input tensor
 * (the only memory pred() writes while it reads the text), or 0. The text is read before
 * any instruction runs, so the activations may then take its bytes: a fresh instance
 * faults each page it touches in on every call (microseconds each), and these pages
 * are then faulted once, not twice (a base64 image is 4/3 of its tensor). */
static uintptr_t text_in_arena(const header_t *h, size_t n) {
    uintptr_t lo = ((uintptr_t)h + h->size + 63) & ~(uintptr_t)63, hi = h->arena_end;
    const io_t *ios = (const io_t *)((const char *)h + h->io_off);
    for (uint32_t i = 0; i < h->n_in; i++)  /* a text input points into the request while */
        if (ios[i].dtype == TXT) return 0;  /* the plan runs: the text stays out of the arena */
    for (uint32_t c = 0; c <= h->n_in; c++) {  /* the arena's start, then each input's end */
        uintptr_t at = lo;
        if (c) {
            const io_t *t = &ios[c - 1];
            at = ((uintptr_t)t->addr + (size_t)t->count * ESIZE[t->dtype] + 15) & ~(uintptr_t)15;
        }
        if (at < lo || at > hi || hi - at < n) continue;
        int clear = 1;
        for (uint32_t i = 0; i < h->n_in && clear; i++) {
            uintptr_t a = (uintptr_t)ios[i].addr, e = a + (size_t)ios[i].count * ESIZE[ios[i].dtype];
            clear = e <= at || a >= at + n;
        }
        if (clear) return at;
    }
    return 0;
}

EXPORT("malloc_buffer") int32_t malloc_buffer(int32_t length) {
    const header_t *h = (const header_t *)plan_base();
    uintptr_t floor = h->magic == MAGIC ? h->arena_end : (uintptr_t)&__heap_base;
    if (heap_top < floor) heap_top = floor;
    uintptr_t at = h->magic == MAGIC ? text_in_arena(h, (size_t)(uint32_t)length) : 0;
    in_buf = at ? (unsigned char *)at : (unsigned char *)alloc((size_t)(uint32_t)length);
    return (int32_t)(uintptr_t)in_buf;
}

EXPORT("free_buffer") void free_buffer(int32_t p) { (void)p; /* one task per instance */ }
EXPORT("get_out_len") int32_t get_out_len(void) { return out_len; }
EXPORT("get_out_loc") int32_t get_out_loc(void) { return (int32_t)(uintptr_t)out_buf; }

static int is_key(cur_t *c, const char **key, int *klen) {
    ws(c);
    if (*c->s != '"') return 0;
    *key = ++c->s;
    while (*c->s && *c->s != '"') { if (*c->s == '\\' && c->s[1]) c->s++; c->s++; }
    if (*c->s != '"') return 0;
    *klen = (int)(c->s - *key);
    c->s++; ws(c);
    if (*c->s != ':') return 0;
    c->s++;
    return 1;
}

/* Find each input's value in the request: by its name at the top, under "input"
 * when the model has one input, or by name inside an "input" object. */
static int read_request(const char *text, const io_t *ins, int n_in) {
    const char *where[16] = {0};
    cur_t c = {text};
    ws(&c);
    if (*c.s != '{') {
        err_s("the input is not a JSON object; send {\"input\": [...]}");
        return fail();
    }
    c.s++; ws(&c);
    if (*c.s != '}') for (;;) {
        const char *key; int klen;
        if (!is_key(&c, &key, &klen)) goto malformed;
        ws(&c);
        int used = 0;
        if (klen == 5 && streq_json(key, 5, "input")) {
            int named_input = 0;  /* an input the model itself calls "input" */
            for (int i = 0; i < n_in; i++) if (streq_json("input", 5, ins[i].name)) named_input = 1;
            if (*c.s == '{') {  /* inputs by name */
                cur_t d = {c.s + 1};
                ws(&d);
                if (*d.s != '}') for (;;) {
                    const char *k2; int l2;
                    if (!is_key(&d, &k2, &l2)) goto malformed;
                    ws(&d);
                    int found = 0;
                    for (int i = 0; i < n_in; i++) if (streq_json(k2, l2, ins[i].name)) { where[i] = d.s; found = 1; }
                    if (!found) {
                        err_s("unknown input name in \"input\"; the model's inputs are:");
                        for (int i = 0; i < n_in; i++) { err_s(" '"); err_s(ins[i].name); err_s("'"); }
                        return fail();
                    }
                    if (!skip_value(&d, 1)) goto malformed;
                    ws(&d);
                    if (*d.s == ',') { d.s++; continue; }
                    if (*d.s == '}') break;
                    goto malformed;
                }
                used = 1;  /* an object of inputs by name, even with an input named "input" */
            } else if (n_in == 1) { where[0] = c.s; used = 1; }
            else if (!named_input) {
                err_s("the model has ");
                err_u((uint64_t)n_in);
                err_s(" inputs; send them by name, {\"input\": {");
                for (int i = 0; i < n_in; i++) { if (i) err_s(", "); err_s("\""); err_s(ins[i].name); err_s("\": [...]"); }
                err_s("}}");
                return fail();
            }
        }
        for (int i = 0; i < n_in && !used; i++) if (streq_json(key, klen, ins[i].name)) where[i] = c.s;
        if (!skip_value(&c, 0)) goto malformed;
        ws(&c);
        if (*c.s == ',') { c.s++; continue; }
        if (*c.s == '}') break;
        goto malformed;
    }
    for (int i = 0; i < n_in; i++) {
        if (!where[i]) {
            err_s("missing input '"); err_s(ins[i].name); err_s("'");
            err_shape(&ins[i]);
            err_s("; send {\"input\": [...]}");
            if (n_in > 1) err_s(" with an object of the inputs by name");
            return fail();
        }
        cur_t v = {where[i]};
        if (read_input(&v, &ins[i])) return 1;
    }
    return 0;
malformed:
    err_s("the input is not valid JSON near byte ");
    err_u((uint64_t)(c.s - text));
    return fail();
}

EXPORT("pred") int32_t pred(void) {
    const header_t *h = (const header_t *)plan_base();
    if (h->magic != MAGIC) { err_s("this module holds no model plan"); return fail(); }
    if (!in_buf) { err_s("no input"); return fail(); }
    const io_t *ios = (const io_t *)((const char *)h + h->io_off);
    const io_t *outs = ios + h->n_in;
    if (read_request((const char *)in_buf, ios, (int)h->n_in)) return 1;
    if (run_plan(h)) return fail();
    size_t cap = 32;
    for (uint32_t i = 0; i < h->n_out; i++) {
        int dt = outs[i].dtype;
        size_t per = (dt == F32 || dt == F64 || dt == F16) ? 18 : dt == BOOL ? 7 :
                     dt == STR ? 6 * (size_t)outs[i].pad[2] + 8 : 22;
        size_t names = 8; for (const char *s = outs[i].name; *s; s++) names += 2;
        cap += (size_t)outs[i].count * per + names + 16;
    }
    out_buf = (char *)alloc(cap);
    if (!out_buf) { err_s("out of memory for the output"); return fail(); }
    op_ = out_buf;
    /* Each output written once: the first as Scailable's "output" (not again under its
     * name), the others by name. A later output the model calls "output" cannot be
     * told from the first, so it is left out. */
    out_s("{\"output\": ");
    out_tensor(&outs[0]);
    for (uint32_t i = 1; i < h->n_out; i++) {
        if (streq_json("output", 6, outs[i].name)) continue;
        out_s(", \"");
        for (const char *s = outs[i].name; *s; s++) {
            if (*s == '"' || *s == '\\') *op_++ = '\\';
            *op_++ = *s;
        }
        out_s("\": ");
        out_tensor(&outs[i]);
    }
    out_s("}");
    out_len = (int32_t)(op_ - out_buf);
    return 0;
}
