// The open fused engine: one compiled time loop that runs any cell's step, given as a program.
//
// rnnkit/engine/trace.py reads a cell's `recurrence(gi, state)` into a graph of row operations
// and rnnkit/engine/plan.py lays it out as a Program: where every value of a step lives (the
// buffers), the element-wise instructions between the recurrent matrix products (stages), their
// adjoints in reverse order, and the matrix products themselves. This file executes it:
//
//   forward, per step t:   for each stage: its GEMMs over the whole batch (BLAS), then its
//                          element-wise instructions row by row (rows split across threads);
//   backward, per step t   the adjoint instructions row by row, stage by stage in reverse, each
//   (t = T-1 .. 0):        stage's GEMM adjoints ∂v += ∂out · W over the batch; after the loop
//                          every weight gradient is one GEMM over all steps, Σ_t ∂out(t)ᵀ v(t).
//
// Variable lengths: row b runs steps 0 .. len_b-1; past its end it computes nothing, its outputs
// and stored values are zero and its final state is read at its own last step.
//
// Symbols: T time, B batch, G the projected input's width, w a value's width, d a delay.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "vecmath.h"

#if defined(RNNKIT_BLAS_SYMBOLS)
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}
#endif
#if defined(RNNKIT_MKL_PACKED)
extern "C" {
size_t sgemm_pack_get_size_(const char* identifier, const int* m, const int* n, const int* k);
void sgemm_pack_(const char* identifier, const char* trans, const int* m, const int* n, const int* k, const float* alpha,
                 const float* src, const int* ld, float* dest);
void sgemm_compute_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* a,
                    const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
}
#endif

namespace rnnkit {
namespace program {

using at::Tensor;

// C (M×N, row stride ldc) = A (M×K, row stride lda) · op(W) + beta·C; op(W) = Wᵀ of a contiguous
// (N×K) W when trans_w, else a contiguous (K×N) W.
template <typename T>
static void gemm(bool trans_w, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* W, T beta, T* C,
                 int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == T(0))
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
#if defined(RNNKIT_BLAS_SYMBOLS)
  // row-major C = A·op(W) is column-major Cᵀ = op(W)ᵀ·Aᵀ
  const char tw = trans_w ? 'T' : 'N', ta = 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int ldw = static_cast<int>(trans_w ? K : N), la = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const T one = T(1);
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&tw, &ta, &m, &n, &k, &one, W, &ldw, A, &la, &beta, C, &lc);
  else
    dgemm_(&tw, &ta, &m, &n, &k, &one, W, &ldw, A, &la, &beta, C, &lc);
#else
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  Tensor w = trans_w ? at::from_blob(const_cast<T*>(W), {N, K}, opts).t() : at::from_blob(const_cast<T*>(W), {K, N}, opts);
  Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0))
    c.copy_(at::mm(a, w));
  else
    c.add_(at::mm(a, w));
#endif
}

// A recurrent matrix as the forward pass multiplies by it, prepared once per call (BLAS would
// otherwise rearrange the row-major W on every v·Wᵀ call): MKL's packed form of W where the
// extension is built with it (float32), else Wᵀ stored (K×N), which BLAS reads in place.
struct ForwardMatrix {
  Tensor packed, transposed;
};

template <typename T>
static ForwardMatrix prepare_matrix(const Tensor& W, int64_t B) {
  ForwardMatrix f;
#if defined(RNNKIT_MKL_PACKED)
  if constexpr (std::is_same_v<T, float>) {
    if (B > 0) {
      const char id = 'A', tr = 'T';
      const int m = static_cast<int>(W.size(0)), n = static_cast<int>(B), k = static_cast<int>(W.size(1));
      const float one = 1;
      const size_t bytes = sgemm_pack_get_size_(&id, &m, &n, &k);
      f.packed = at::empty({static_cast<int64_t>((bytes + sizeof(float) - 1) / sizeof(float))}, W.options());
      sgemm_pack_(&id, &tr, &m, &n, &k, &one, W.data_ptr<float>(), &k, f.packed.data_ptr<float>());
      return f;
    }
  }
#endif
  f.transposed = W.t().contiguous();
  return f;
}

// C (M×N, row stride ldc) = A (M×K, row stride lda) · Wᵀ + beta·C, W prepared by prepare_matrix
template <typename T>
static void gemm_prepared(const ForwardMatrix& f, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, T beta,
                          T* C, int64_t ldc) {
#if defined(RNNKIT_MKL_PACKED)
  if constexpr (std::is_same_v<T, float>) {
    if (f.packed.defined()) {
      if (M == 0 || N == 0) return;
      const char p = 'P', nt = 'N';
      const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
      const int la = static_cast<int>(lda), lc = static_cast<int>(ldc);
      sgemm_compute_(&p, &nt, &m, &n, &k, f.packed.data_ptr<float>(), &k, A, &la, &beta, C, &lc);
      return;
    }
  }
#endif
  gemm<T>(false, M, N, K, A, lda, f.transposed.data_ptr<T>(), beta, C, ldc);
}

// The instruction set. The Python planner reads these numbers from `codes()`, so they are
// written only here.
enum Op : int64_t {
  COPY, ADD, SUB, MUL, DIV, MAX, MIN, GT, GE, LT, LE, EQ, NE,
  NEG, SIGMOID, TANH, RELU, EXP, LOG, ABS, SQRT, RSQRT, POW, CLAMP,
  WHERE, ROWSUM, ROWMEAN, BSUM, BEXPAND, REM, ACCUM, MULADD, LAYERNORM, ADD3, NUM_OPS
};
static const char* OP_NAMES[] = {
  "copy", "add", "sub", "mul", "div", "max", "min", "gt", "ge", "lt", "le", "eq", "ne",
  "neg", "sigmoid", "tanh", "relu", "exp", "log", "abs", "sqrt", "rsqrt", "pow", "clamp",
  "where", "rowsum", "rowmean", "bsum", "bexpand", "rem", "accum", "muladd", "layernorm", "add3"};

// Where values live. Forward: the projected input, the previous and new state fields, the saved
// frame (values backward reads), the output, batch-wide and per-row scratch, static tensors and
// delay-line slots. Backward: the gradients of each of those.
enum BufKind : int64_t {
  GI, SIN, SOUT, SAVED, OUT, BTEMP, RTEMP, STATIC, DELAY,
  G_GI, G_DSOUT, G_DSIN, G_FRAME, G_DG, G_DHIST, G_DHISTPUSH, G_DY, G_ACC, NUM_BUF_KINDS
};
static const char* BUF_NAMES[] = {"gi", "sin", "sout", "saved", "out", "btemp", "rtemp", "static", "delay",
                                  "g_gi", "g_dsout", "g_dsin", "g_frame", "g_dg", "g_dhist", "g_dhistpush", "g_dy",
                                  "g_acc"};
enum FieldKind : int64_t { F_FLOAT, F_DELAY, F_COUNTER };

// One instruction: an operation, its output and up to three operands (buffer, offset, width),
// an integer attribute and the gradient locations (buffer −1 for none).
enum Col : int64_t {
  C_OP, C_W, C_OBUF, C_OOFF, C_ABUF, C_AOFF, C_AW, C_BBUF, C_BOFF, C_BW, C_CBUF, C_COFF, C_CW, C_K,
  C_GOBUF, C_GOOFF, C_GABUF, C_GAOFF, C_GBBUF, C_GBOFF, C_GCBUF, C_GCOFF, C_FLAGS, C_XBUF, C_XOFF, NCOL
};
// C_FLAGS bits 0, 1, 2: the adjoint is the first to write operand a's, b's, c's gradient this step,
// so it stores instead of adding (and nothing has to clear it first).
// C_XBUF, C_XOFF: where the forward pass keeps per-row values for the adjoint (a layer norm's mean
// and 1/σ), buffer −1 for none.
// A matrix product out = init + v Wᵀ: its input, output, matrix (a static slot), sizes, where the
// gradients of its input and output live, its stage, and up to three addends it starts from.
enum GemmCol : int64_t {
  M_IBUF, M_IOFF, M_OBUF, M_OOFF, M_MAT, M_N, M_K, M_GIBUF, M_GIOFF, M_GOBUF, M_GOOFF, M_STAGE,
  M_I1BUF, M_I1OFF, M_I1W, M_I2BUF, M_I2OFF, M_I2W, M_I3BUF, M_I3OFF, M_I3W, M_GSTORE, NGCOL
};

struct Ins {
  int64_t op, w, o, oo, a, ao, aw, b, bo, bw, c, co, cw, k, go, goo, ga, gao, gb, gbo, gc, gco, flags, x, xo;
  double p0, p1;
};

// The program as the planner hands it over: named int64 tables, no positional argument lists.
struct Program {
  Tensor buffers;     // (nbuf, 3): kind, p, q — e.g. (SIN, field, 0), (DELAY, field, slot), (G_DG, gemm, 0)
  Tensor forward;     // (n, NCOL) forward instructions, stage by stage
  Tensor forward_p;   // (n, 2) float attributes (clamp bounds, pow exponent)
  Tensor forward_stages;   // (S + 1,) where each stage's forward instructions start
  Tensor backward;    // (m, NCOL) adjoint instructions, stage by stage, each stage in reverse order
  Tensor backward_p;
  Tensor backward_stages;  // (S + 1,)
  Tensor pre;         // (p, NCOL) per-row gradient additions before the adjoints (delay lines)
  Tensor gemms;       // (g, NGCOL) the matrix products
  Tensor biases;      // (b, 2): product, static slot — a static addend whose gradient is Σ_t,b ∂out
  Tensor fields;      // (F, 5): kind, width, delay, push buffer, push offset
  Tensor acc_widths;  // (nstatic,) width of each static's gradient accumulator, 0 for none
  Tensor dg_widths;   // (q,) width of each kept-for-all-steps gradient (matrix product outputs)
  int64_t proj_size = 0, saved_width = 0, btemp_width = 0, rtemp_width = 0, frame_width = 0;
  int64_t out_width = 0, out_alias = -1;  // the output is field out_alias's storage, or its own
  bool clear_frame = true;  // whether the gradient frame must be zeroed each step (some adjoint adds to it first)
  // whether the projected input's gradient, and each kept product-output gradient, must start at
  // zero (else every step's adjoints store into each of its columns before anything reads it)
  bool zero_gi = true;
  Tensor zero_dg;  // (q,) 0 or 1; undefined: all 1
};

static std::vector<Ins> decode(const Tensor& ins, const Tensor& p) {
  std::vector<Ins> out(ins.size(0));
  const int64_t* I = ins.data_ptr<int64_t>();
  const double* D = p.data_ptr<double>();
  for (int64_t i = 0; i < ins.size(0); ++i) {
    const int64_t* r = I + i * NCOL;
    out[i] = Ins{r[C_OP], r[C_W], r[C_OBUF], r[C_OOFF], r[C_ABUF], r[C_AOFF], r[C_AW], r[C_BBUF], r[C_BOFF], r[C_BW],
                 r[C_CBUF], r[C_COFF], r[C_CW], r[C_K], r[C_GOBUF], r[C_GOOFF], r[C_GABUF], r[C_GAOFF], r[C_GBBUF],
                 r[C_GBOFF], r[C_GCBUF], r[C_GCOFF], r[C_FLAGS], r[C_XBUF], r[C_XOFF], D[2 * i], D[2 * i + 1]};
  }
  return out;
}

static std::vector<int64_t> to_vec(const Tensor& t) {
  const int64_t* p = t.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + t.numel());
}

// --- the element-wise kernels ------------------------------------------------------------------
// An operand of width 1 broadcasts over the output's w; FA/FB/FC say at compile time whether
// each is full width, so the common all-full loops vectorise.

template <typename T, typename F>
static inline void with_full(bool fa, bool fb, F f) {
  if (fa && fb)
    f(std::true_type{}, std::true_type{});
  else if (fa)
    f(std::true_type{}, std::false_type{});
  else if (fb)
    f(std::false_type{}, std::true_type{});
  else
    f(std::false_type{}, std::false_type{});
}

// g += Σ contributions f(u) (g = … when `store`): element-wise for a full-width operand, summed
// for a broadcast one.
template <typename T, typename F>
static inline T rowsum(int64_t n, F f);

template <bool FULL, typename T, typename F>
static inline void accum(T* g, int64_t w, bool store, F f) {
  if constexpr (FULL) {
    if (store)
      for (int64_t u = 0; u < w; ++u) g[u] = f(u);
    else
      for (int64_t u = 0; u < w; ++u) g[u] += f(u);
  } else {
    const T s = rowsum<T>(w, f);
    g[0] = store ? s : g[0] + s;
  }
}

template <typename T, typename VF>
static inline void vmap(const T* src, T* dst, int64_t n, VF f) {
  using V = Vectorized<T>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) f(V::loadu(src + i)).store(dst + i);
  if (i < n) f(V::loadu(src + i, n - i)).store(dst + i, n - i);
}

// Σ f(u) for u < n, vectorised (the sums' order differs from a plain loop's by rounding only)
template <typename T, typename F>
static inline T rowsum(int64_t n, F f) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t u = 0; u < n; ++u) s += f(u);
  return s;
}

template <typename T>
static inline T sgn(T x) {
  return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
}

// The rows an instruction runs over, and where each buffer's row b starts. An instruction runs
// over all the active rows of a chunk at once: its dispatch, operand decoding and broadcast
// choice are paid once per chunk, not once per row.
template <typename T>
struct Rows {
  const int64_t* idx;          // the active rows
  int64_t n;
  T* const* base;              // per buffer: the pointer of row 0 (nullptr: not available here)
  const int64_t* stride;       // per buffer: the row stride
  const int64_t* const* tick0; // per field: its step counter's initial values (nullptr if none)
  int64_t t;                   // the step
};

template <typename T>
static inline T* at_row(const Rows<T>& R, int64_t buf, int64_t off, int64_t b) {
  return buf >= 0 && R.base[buf] ? R.base[buf] + b * R.stride[buf] + off : nullptr;
}

// body(b, o, a, bb, c) for each active row, with the instruction's operand pointers at that row
template <typename T, typename F>
static inline void each_row(const Ins& I, const Rows<T>& R, F body) {
  for (int64_t n = 0; n < R.n; ++n) {
    const int64_t b = R.idx[n];
    body(b, at_row(R, I.o, I.oo, b), at_row(R, I.a, I.ao, b), at_row(R, I.b, I.bo, b), at_row(R, I.c, I.co, b));
  }
}

template <typename T>
static void run_forward(const Ins& I, const Rows<T>& R) {
  const int64_t w = I.w;
  const bool fa = I.aw == w, fb = I.bw == w, fc = I.cw == w;
  auto binary = [&](auto f) {
    with_full<T>(fa, fb, [&](auto FA, auto FB) {
      each_row(I, R, [&](int64_t, T* o, const T* a, const T* b, const T*) {
        for (int64_t u = 0; u < w; ++u) o[u] = f(a[FA ? u : 0], b[FB ? u : 0]);
      });
    });
  };
  auto unary = [&](auto f) {
    each_row(I, R, [&](int64_t, T* o, const T* a, const T*, const T*) { f(o, a); });
  };
  switch (I.op) {
    case COPY:
      unary([&](T* o, const T* a) {
        if (fa)
          std::memcpy(o, a, w * sizeof(T));
        else
          std::fill(o, o + w, a[0]);
      });
      break;
    case ADD: binary([](T x, T y) { return x + y; }); break;
    case SUB: binary([](T x, T y) { return x - y; }); break;
    case MUL: binary([](T x, T y) { return x * y; }); break;
    case DIV: binary([](T x, T y) { return x / y; }); break;
    case MAX: binary([](T x, T y) { return std::isnan(x) || x > y ? x : y; }); break;
    case MIN: binary([](T x, T y) { return std::isnan(x) || x < y ? x : y; }); break;
    case MULADD:  // o = a ⊙ b + c
      with_full<T>(fa, fb, [&](auto FA, auto FB) {
        each_row(I, R, [&](int64_t, T* o, const T* a, const T* b, const T* c) {
          if (fc)
            for (int64_t u = 0; u < w; ++u) o[u] = a[FA ? u : 0] * b[FB ? u : 0] + c[u];
          else
            for (int64_t u = 0; u < w; ++u) o[u] = a[FA ? u : 0] * b[FB ? u : 0] + c[0];
        });
      });
      break;
    case ADD3:  // o = a + (b + c)
      with_full<T>(fa, fb, [&](auto FA, auto FB) {
        each_row(I, R, [&](int64_t, T* o, const T* a, const T* b, const T* c) {
          if (fc)
            for (int64_t u = 0; u < w; ++u) o[u] = a[FA ? u : 0] + (b[FB ? u : 0] + c[u]);
          else
            for (int64_t u = 0; u < w; ++u) o[u] = a[FA ? u : 0] + (b[FB ? u : 0] + c[0]);
        });
      });
      break;
    case GT: binary([](T x, T y) { return T(x > y); }); break;
    case GE: binary([](T x, T y) { return T(x >= y); }); break;
    case LT: binary([](T x, T y) { return T(x < y); }); break;
    case LE: binary([](T x, T y) { return T(x <= y); }); break;
    case EQ: binary([](T x, T y) { return T(x == y); }); break;
    case NE: binary([](T x, T y) { return T(x != y); }); break;
    case NEG: unary([&](T* o, const T* a) { for (int64_t u = 0; u < w; ++u) o[u] = -a[u]; }); break;
    case SIGMOID:
      unary([&](T* o, const T* a) {
        if (o != a) std::memcpy(o, a, w * sizeof(T));
        sigmoid_(o, w);
      });
      break;
    case TANH: unary([&](T* o, const T* a) { tanh_to(a, o, w); }); break;
    case RELU:
      unary([&](T* o, const T* a) {
        for (int64_t u = 0; u < w; ++u) o[u] = a[u] > T(0) ? a[u] : (std::isnan(a[u]) ? a[u] : T(0));
      });
      break;
    case EXP: unary([&](T* o, const T* a) { vmap(a, o, w, [](const Vectorized<T>& x) { return x.exp(); }); }); break;
    case LOG: unary([&](T* o, const T* a) { vmap(a, o, w, [](const Vectorized<T>& x) { return x.log(); }); }); break;
    case ABS: unary([&](T* o, const T* a) { for (int64_t u = 0; u < w; ++u) o[u] = std::abs(a[u]); }); break;
    case SQRT: unary([&](T* o, const T* a) { vmap(a, o, w, [](const Vectorized<T>& x) { return x.sqrt(); }); }); break;
    case RSQRT: unary([&](T* o, const T* a) { vmap(a, o, w, [](const Vectorized<T>& x) { return x.rsqrt(); }); }); break;
    case POW: unary([&](T* o, const T* a) { for (int64_t u = 0; u < w; ++u) o[u] = std::pow(a[u], T(I.p0)); }); break;
    case CLAMP: {
      const T lo = T(I.p0), hi = T(I.p1);
      unary([&](T* o, const T* a) { for (int64_t u = 0; u < w; ++u) o[u] = std::min(std::max(a[u], lo), hi); });
      break;
    }
    case WHERE:
      each_row(I, R, [&](int64_t, T* o, const T* a, const T* b, const T* c) {
        for (int64_t u = 0; u < w; ++u) o[u] = a[fa ? u : 0] != T(0) ? b[fb ? u : 0] : c[fc ? u : 0];
      });
      break;
    case ROWSUM:
    case ROWMEAN:
      unary([&](T* o, const T* a) {
        T s = 0;
        for (int64_t u = 0; u < I.aw; ++u) s += a[u];
        o[0] = I.op == ROWSUM ? s : s / T(I.aw);
      });
      break;
    case BSUM:
      unary([&](T* o, const T* a) {
        for (int64_t j = 0; j < w; ++j) {
          T s = 0;
          for (int64_t r = 0; r < I.k; ++r) s += a[j * I.k + r];
          o[j] = s;
        }
      });
      break;
    case BEXPAND:
      unary([&](T* o, const T* a) {
        for (int64_t j = 0; j < I.aw; ++j)
          for (int64_t r = 0; r < I.k; ++r) o[j * I.k + r] = a[j];
      });
      break;
    case LAYERNORM:  // o = (a − mean(a)) / sqrt(var(a) + ε) ⊙ b + c over the row (b, c: gain and shift)
      with_full<T>(fb, fc, [&](auto FB, auto FC) {
        each_row(I, R, [&](int64_t row, T* o, const T* a, const T* b, const T* c) {
          const T mu = rowsum<T>(w, [&](int64_t u) { return a[u]; }) / T(w);
          const T var = rowsum<T>(w, [&](int64_t u) { return (a[u] - mu) * (a[u] - mu); }) / T(w);
          const T r = T(1) / std::sqrt(var + T(I.p0));
          for (int64_t u = 0; u < w; ++u) o[u] = (a[u] - mu) * r * b[FB ? u : 0] + c[FC ? u : 0];
          if (T* st = at_row(R, I.x, I.xo, row)) st[0] = mu, st[1] = r;  // for the adjoint
        });
      });
      break;
    case REM:  // (the step counter) mod period, in integers: exact at any step
      each_row(I, R, [&](int64_t row, T* o, const T* a, const T*, const T*) {
        const int64_t tick = R.tick0[I.k][row] + R.t;
        int64_t last = 0;
        T value = 0;
        for (int64_t u = 0; u < w; ++u) {
          const int64_t p = static_cast<int64_t>(a[fa ? u : 0]);
          if (u == 0 || p != last) {  // units of one period are usually adjacent: one modulo per run
            int64_t r = p ? tick % p : 0;
            if (r != 0 && ((r < 0) != (p < 0))) r += p;  // Python's sign convention, as torch.remainder
            last = p;
            value = T(r);
          }
          o[u] = value;
        }
      });
      break;
    default: TORCH_CHECK(false, "rnnkit program: forward of unknown operation ", I.op);
  }
}

// The adjoint pointers of one row: dy (the output's gradient), the forward values o, a, b, c
// (nullptr where backward does not keep them) and the operands' gradients ga, gb, gc.
template <typename T>
struct Adj {
  const T *dy, *o, *a, *b, *c;
  T *ga, *gb, *gc;
  const T* x;  // what the forward pass kept for this adjoint (nullptr: nothing)
};

template <typename T, typename F>
static inline void each_adjoint_row(const Ins& I, const Rows<T>& R, F body) {
  for (int64_t n = 0; n < R.n; ++n) {
    const int64_t b = R.idx[n];
    body(Adj<T>{at_row(R, I.go, I.goo, b), at_row(R, I.o, I.oo, b), at_row(R, I.a, I.ao, b), at_row(R, I.b, I.bo, b),
                at_row(R, I.c, I.co, b), at_row(R, I.ga, I.gao, b), at_row(R, I.gb, I.gbo, b),
                at_row(R, I.gc, I.gco, b), at_row(R, I.x, I.xo, b)});
  }
}

template <typename T>
static void run_backward(const Ins& I, const Rows<T>& R) {
  const int64_t w = I.w;
  const bool fa = I.aw == w, fb = I.bw == w;
  const bool sa = I.flags & 1, sb = I.flags & 2, sc = I.flags & 4;
  if (I.op == ACCUM) {  // go += a: gradient arriving from elsewhere (a delay line's later reads)
    each_adjoint_row(I, R, [&](const Adj<T>& J) {
      T* g = const_cast<T*>(J.dy);
      if (sa)
        std::memcpy(g, J.a, w * sizeof(T));
      else
        for (int64_t u = 0; u < w; ++u) g[u] += J.a[u];
    });
    return;
  }
  // f(J, u): the contribution to a's gradient at output element u
  auto unary = [&](auto f) {
    each_adjoint_row(I, R, [&](const Adj<T>& J) { accum<true>(J.ga, w, sa, [&](int64_t u) { return f(J, u); }); });
  };
  // da(J, u, i, j) and db(J, u, i, j): the contributions to each operand at output element u,
  // where operand a is read at i and b at j
  auto binary = [&](auto da, auto db) {
    with_full<T>(fa, fb, [&](auto FA, auto FB) {
      constexpr bool A_FULL = decltype(FA)::value, B_FULL = decltype(FB)::value;
      each_adjoint_row(I, R, [&](const Adj<T>& J) {
        if (J.ga) accum<A_FULL>(J.ga, w, sa, [&](int64_t u) { return da(J, u, A_FULL ? u : 0, B_FULL ? u : 0); });
        if (J.gb) accum<B_FULL>(J.gb, w, sb, [&](int64_t u) { return db(J, u, A_FULL ? u : 0, B_FULL ? u : 0); });
      });
    });
  };
  using J_ = const Adj<T>&;
  auto pass = [](J_ J, int64_t u, int64_t, int64_t) { return J.dy[u]; };
  switch (I.op) {
    case COPY:
      with_full<T>(fa, true, [&](auto FA, auto) {
        each_adjoint_row(I, R, [&](J_ J) { accum<decltype(FA)::value>(J.ga, w, sa, [&](int64_t u) { return J.dy[u]; }); });
      });
      break;
    case ADD: binary(pass, pass); break;
    case SUB: binary(pass, [](J_ J, int64_t u, int64_t, int64_t) { return -J.dy[u]; }); break;
    case MUL:
      binary([](J_ J, int64_t u, int64_t, int64_t j) { return J.dy[u] * J.b[j]; },
             [](J_ J, int64_t u, int64_t i, int64_t) { return J.dy[u] * J.a[i]; });
      break;
    case MULADD:
    case ADD3: {
      if (I.op == MULADD)
        binary([](J_ J, int64_t u, int64_t, int64_t j) { return J.dy[u] * J.b[j]; },
               [](J_ J, int64_t u, int64_t i, int64_t) { return J.dy[u] * J.a[i]; });
      else
        binary(pass, pass);
      if (I.gc >= 0) {
        const bool fc = I.cw == w;
        each_adjoint_row(I, R, [&](J_ J) {
          if (fc)
            accum<true>(J.gc, w, sc, [&](int64_t u) { return J.dy[u]; });
          else
            accum<false>(J.gc, w, sc, [&](int64_t u) { return J.dy[u]; });
        });
      }
      break;
    }
    case DIV:
      binary([](J_ J, int64_t u, int64_t, int64_t j) { return J.dy[u] / J.b[j]; },
             [](J_ J, int64_t u, int64_t, int64_t j) { return -J.dy[u] * J.o[u] / J.b[j]; });
      break;
    case MAX:
    case MIN: {
      const bool mx = I.op == MAX;
      // the larger (smaller) operand takes the gradient; a tie splits it evenly, as torch does
      auto share = [mx](T x, T y) { return x == y ? T(0.5) : T((x > y) == mx); };
      binary([&](J_ J, int64_t u, int64_t i, int64_t j) { return J.dy[u] * share(J.a[i], J.b[j]); },
             [&](J_ J, int64_t u, int64_t i, int64_t j) { return J.dy[u] * share(J.b[j], J.a[i]); });
      break;
    }
    case NEG: unary([](J_ J, int64_t u) { return -J.dy[u]; }); break;
    case SIGMOID: unary([](J_ J, int64_t u) { return J.dy[u] * J.o[u] * (T(1) - J.o[u]); }); break;
    case TANH: unary([](J_ J, int64_t u) { return J.dy[u] * (T(1) - J.o[u] * J.o[u]); }); break;
    case RELU: unary([](J_ J, int64_t u) { return J.o[u] > T(0) ? J.dy[u] : T(0); }); break;
    case EXP: unary([](J_ J, int64_t u) { return J.dy[u] * J.o[u]; }); break;
    case LOG: unary([](J_ J, int64_t u) { return J.dy[u] / J.a[u]; }); break;
    case ABS: unary([](J_ J, int64_t u) { return J.dy[u] * sgn(J.a[u]); }); break;
    case SQRT: unary([](J_ J, int64_t u) { return J.dy[u] / (T(2) * J.o[u]); }); break;
    case RSQRT: unary([](J_ J, int64_t u) { return T(-0.5) * J.dy[u] * J.o[u] * J.o[u] * J.o[u]; }); break;
    case POW: {
      const T p = T(I.p0);
      unary([p](J_ J, int64_t u) { return p == T(0) ? T(0) : J.dy[u] * p * std::pow(J.a[u], p - T(1)); });
      break;
    }
    case CLAMP: {
      const T lo = T(I.p0), hi = T(I.p1);
      unary([lo, hi](J_ J, int64_t u) { return (J.a[u] >= lo && J.a[u] <= hi) ? J.dy[u] : T(0); });
      break;
    }
    case WHERE: {
      const bool fc = I.cw == w;
      with_full<T>(fb, fc, [&](auto FB, auto FC) {
        constexpr bool B_FULL = decltype(FB)::value, C_FULL = decltype(FC)::value;
        each_adjoint_row(I, R, [&](J_ J) {
          if (J.gb) accum<B_FULL>(J.gb, w, sb, [&](int64_t u) { return J.a[fa ? u : 0] != T(0) ? J.dy[u] : T(0); });
          if (J.gc) accum<C_FULL>(J.gc, w, sc, [&](int64_t u) { return J.a[fa ? u : 0] != T(0) ? T(0) : J.dy[u]; });
        });
      });
      break;
    }
    case LAYERNORM: {
      // with x̂ = (a − μ) r and g = ∂o ⊙ gain: ∂a = r (g − mean(g) − x̂ mean(g ⊙ x̂)),
      // ∂gain = ∂o ⊙ x̂, ∂shift = ∂o; μ and r as the forward pass kept them (else recomputed from
      // the saved input). Two passes over the row: the two means together with the gain's and
      // shift's gradients, then ∂a.
      const bool fc = I.cw == w;
      with_full<T>(fb, fc, [&](auto FB, auto FC) {
        constexpr bool B_FULL = decltype(FB)::value, C_FULL = decltype(FC)::value;
        each_adjoint_row(I, R, [&](J_ J) {
          const T *a = J.a, *dy = J.dy, *gain = J.b;
          T mu, r;
          if (J.x) {
            mu = J.x[0], r = J.x[1];
          } else {
            mu = rowsum<T>(w, [&](int64_t u) { return a[u]; }) / T(w);
            const T var = rowsum<T>(w, [&](int64_t u) { return (a[u] - mu) * (a[u] - mu); }) / T(w);
            r = T(1) / std::sqrt(var + T(I.p0));
          }
          // the usual case, per-unit gain and shift accumulating over steps: both ride along pass 1
          const bool along = J.ga && B_FULL && C_FULL && J.gb && J.gc && !sb && !sc;
          if (J.ga) {
            T sg = 0, sgx = 0;
            if (along) {
              T *gb = J.gb, *gc = J.gc;
#pragma omp simd reduction(+ : sg, sgx)
              for (int64_t u = 0; u < w; ++u) {
                const T g = dy[u] * gain[u], xh = (a[u] - mu) * r;
                sg += g;
                sgx += g * xh;
                gb[u] += dy[u] * xh;
                gc[u] += dy[u];
              }
            } else {
#pragma omp simd reduction(+ : sg, sgx)
              for (int64_t u = 0; u < w; ++u) {
                const T g = dy[u] * gain[B_FULL ? u : 0];
                sg += g;
                sgx += g * ((a[u] - mu) * r);
              }
            }
            const T mg = sg / T(w), mgx = sgx / T(w);
            accum<true>(J.ga, w, sa, [&](int64_t u) {
              return r * (dy[u] * gain[B_FULL ? u : 0] - mg - (a[u] - mu) * r * mgx);
            });
          }
          if (!along) {
            if (J.gb) accum<B_FULL>(J.gb, w, sb, [&](int64_t u) { return dy[u] * ((a[u] - mu) * r); });
            if (J.gc) accum<C_FULL>(J.gc, w, sc, [&](int64_t u) { return dy[u]; });
          }
        });
      });
      break;
    }
    case ROWSUM:
    case ROWMEAN:
      each_adjoint_row(I, R, [&](J_ J) {
        const T g = I.op == ROWSUM ? J.dy[0] : J.dy[0] / T(I.aw);
        accum<true>(J.ga, I.aw, sa, [&](int64_t) { return g; });
      });
      break;
    case BSUM:
      each_adjoint_row(I, R, [&](J_ J) {
        for (int64_t j = 0; j < w; ++j)
          for (int64_t r = 0; r < I.k; ++r) J.ga[j * I.k + r] = sa ? J.dy[j] : J.ga[j * I.k + r] + J.dy[j];
      });
      break;
    case BEXPAND:
      each_adjoint_row(I, R, [&](J_ J) {
        for (int64_t j = 0; j < I.aw; ++j) {
          T s = 0;
          for (int64_t r = 0; r < I.k; ++r) s += J.dy[j * I.k + r];
          J.ga[j] = sa ? s : J.ga[j] + s;
        }
      });
      break;
    default: TORCH_CHECK(false, "rnnkit program: no adjoint for operation ", OP_NAMES[I.op]);
  }
}

// --- the time loop ---------------------------------------------------------------------------------

// o[0:n] = Σ_j x_j (j < m ≤ 3), in one pass; a broadcast addend (full[j] false) is one number.
template <typename T>
static inline void init_sum(T* o, int64_t n, int64_t m, const std::array<const T*, 3>& x,
                            const std::array<bool, 3>& full) {
  if (m == 2 && full[0] && full[1]) {
    for (int64_t u = 0; u < n; ++u) o[u] = x[0][u] + x[1][u];
    return;
  }
  if (m == 1 && full[0]) {
    std::memcpy(o, x[0], n * sizeof(T));
    return;
  }
  for (int64_t u = 0; u < n; ++u) {
    T v = 0;
    for (int64_t j = 0; j < m; ++j) v += x[j][full[j] ? u : 0];
    o[u] = v;
  }
}

struct Decoded {
  std::vector<std::array<int64_t, 3>> bufs;
  std::vector<Ins> fwd, bwd, pre;
  std::vector<int64_t> fstage, bstage;
  std::vector<std::array<int64_t, NGCOL>> gemms;
  std::vector<std::array<int64_t, 5>> fields;
  std::vector<int64_t> acc_w, dg_w;
  int64_t stages;
};

static Decoded decode_program(const Program& P) {
  Decoded D;
  const int64_t* b = P.buffers.data_ptr<int64_t>();
  for (int64_t i = 0; i < P.buffers.size(0); ++i) D.bufs.push_back({b[3 * i], b[3 * i + 1], b[3 * i + 2]});
  D.fwd = decode(P.forward, P.forward_p);
  D.bwd = decode(P.backward, P.backward_p);
  D.pre = decode(P.pre, at::zeros({P.pre.size(0), 2}, at::kDouble));
  D.fstage = to_vec(P.forward_stages);
  D.bstage = to_vec(P.backward_stages);
  D.stages = static_cast<int64_t>(D.fstage.size()) - 1;
  const int64_t* g = P.gemms.data_ptr<int64_t>();
  for (int64_t i = 0; i < P.gemms.size(0); ++i) {
    std::array<int64_t, NGCOL> r;
    for (int64_t j = 0; j < NGCOL; ++j) r[j] = g[i * NGCOL + j];
    D.gemms.push_back(r);
  }
  const int64_t* f = P.fields.data_ptr<int64_t>();
  for (int64_t i = 0; i < P.fields.size(0); ++i) D.fields.push_back({f[5 * i], f[5 * i + 1], f[5 * i + 2], f[5 * i + 3], f[5 * i + 4]});
  D.acc_w = to_vec(P.acc_widths);
  D.dg_w = to_vec(P.dg_widths);
  return D;
}

// All the storage of one call, forward and (when given) backward.
template <typename T>
struct Storage {
  int64_t Tn, B, G;
  const Decoded* D;
  T* gi = nullptr;
  std::vector<T*> init, sout;
  std::vector<const int64_t*> ticks;
  T *saved = nullptr, *out = nullptr, *btemp = nullptr;
  int64_t Ws = 0, Wo = 0, Wb = 0;
  std::vector<T*> statics;
  // backward
  T *dgi = nullptr, *frame = nullptr, *dy = nullptr;
  int64_t Wg = 0;
  std::vector<T*> din, dsin, dg, dhist, acc;

  // (pointer to row 0, row stride) of buffer i at step t; RTEMP is per thread (filled in later)
  std::pair<T*, int64_t> at_step(int64_t i, int64_t t) const {
    const auto& bf = D->bufs[i];
    const int64_t kind = bf[0], p = bf[1], q = bf[2];
    switch (kind) {
      case GI: return {gi + t * B * G, G};
      case SIN: {
        const int64_t w = D->fields[p][1];
        return {t == 0 ? init[p] : sout[p] + (t - 1) * B * w, w};
      }
      case SOUT: {
        const int64_t w = D->fields[p][1];
        return {sout[p] + t * B * w, w};
      }
      case SAVED: return {saved + t * B * Ws, Ws};
      case OUT: return {out + t * B * Wo, Wo};
      case BTEMP: return {btemp, Wb};
      case RTEMP: return {nullptr, 0};
      case STATIC: return {statics[p], 0};
      case DELAY: {  // slot q of field p's line at step t: h(t − d + q)
        const int64_t w = D->fields[p][1], d = D->fields[p][2];
        const int64_t pos = t + q;
        if (pos < d) return {init[p] + pos * B * w, w};
        auto src = at_step(D->fields[p][3], pos - d);
        return {src.first + D->fields[p][4], src.second};
      }
      case G_GI: return {dgi ? dgi + t * B * G : nullptr, G};
      case G_DSOUT: return {din.empty() ? nullptr : din[p], D->fields[p][1]};
      case G_DSIN: return {dsin.empty() ? nullptr : dsin[p], D->fields[p][1]};
      case G_FRAME: return {frame, Wg};
      case G_DG: {
        const int64_t N = D->dg_w[p];
        return {dg.empty() ? nullptr : dg[p] + t * B * N, N};
      }
      case G_DHIST: {
        const int64_t w = D->fields[p][1];
        return {dhist.empty() ? nullptr : dhist[p] + (t + q) * B * w, w};
      }
      case G_DHISTPUSH: {
        const int64_t w = D->fields[p][1], d = D->fields[p][2];
        return {dhist.empty() ? nullptr : dhist[p] + (t + d) * B * w, w};
      }
      case G_DY: return {dy ? dy + t * B * Wo : nullptr, Wo};
      case G_ACC: return {acc.empty() ? nullptr : acc[p], D->acc_w[p]};
    }
    return {nullptr, 0};
  }
};

static inline int64_t row_end(const int64_t* len, int64_t b, int64_t T) { return len ? len[b] : T; }

static int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

template <typename T>
static T* ptr(const Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr;
}

// Returns [y, saved, out, sout_0 .. sout_{F-1}, final_0 .. final_{F-1}].
std::vector<Tensor> run_program_forward(const Program& P, const Tensor& gi_, const std::vector<Tensor>& init_,
                                        const std::vector<Tensor>& statics_, const std::optional<Tensor>& lengths_) {
  TORCH_CHECK(gi_.device().is_cpu(), "rnnkit fused engine runs on CPU tensors only, got ", gi_.device());
  const Decoded D = decode_program(P);
  const Tensor gi = gi_.contiguous();
  const int64_t Tn = gi.size(0), B = gi.size(1), G = gi.size(2);
  TORCH_CHECK(G == P.proj_size, "rnnkit program: gi has width ", G, ", the program expects ", P.proj_size);
  const int64_t nF = static_cast<int64_t>(D.fields.size());
  TORCH_CHECK(static_cast<int64_t>(init_.size()) == nF, "rnnkit program: ", init_.size(), " initial state tensors for ", nF, " fields");
  std::vector<Tensor> init(nF), statics;
  for (int64_t k = 0; k < nF; ++k) init[k] = init_[k].contiguous();
  for (const auto& s : statics_) statics.push_back(s.contiguous());
  const Tensor lengths = lengths_.has_value() && lengths_->defined() ? lengths_->contiguous() : Tensor();
  const auto opts = gi.options();
  std::vector<Tensor> sout(nF);
  for (int64_t k = 0; k < nF; ++k)
    sout[k] = D.fields[k][0] == F_FLOAT ? at::empty({Tn, B, D.fields[k][1]}, opts) : at::empty({0}, opts);
  Tensor saved = at::empty({Tn, B, P.saved_width}, opts);
  Tensor out = P.out_alias < 0 ? at::empty({Tn, B, P.out_width}, opts) : at::empty({0}, opts);
  Tensor btemp = at::empty({B, P.btemp_width}, opts);
  const int64_t nbuf = static_cast<int64_t>(D.bufs.size());

  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnnkit_program_forward", [&] {
    using T_ = scalar_t;
    Storage<T_> S{Tn, B, G, &D};
    S.gi = gi.data_ptr<T_>();
    for (int64_t k = 0; k < nF; ++k) {
      if (D.fields[k][0] == F_COUNTER) {
        S.init.push_back(nullptr);
        S.ticks.push_back(init[k].data_ptr<int64_t>());
      } else {
        S.init.push_back(init[k].data_ptr<T_>());
        S.ticks.push_back(nullptr);
      }
      S.sout.push_back(ptr<T_>(sout[k]));
    }
    S.saved = ptr<T_>(saved);
    S.Ws = P.saved_width;
    S.out = ptr<T_>(out);
    S.Wo = P.out_width;
    S.btemp = ptr<T_>(btemp);
    S.Wb = P.btemp_width;
    for (auto& s : statics) S.statics.push_back(s.data_ptr<T_>());
    const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
    const int64_t grain = grain_rows(P.saved_width + P.rtemp_width + P.btemp_width);
    std::vector<T_*> base(nbuf);
    std::vector<int64_t> stride(nbuf), active_all(B);
    // scratch rows: per row, reused every step (nothing outlives its stage there)
    std::vector<T_> rtemp(static_cast<size_t>(std::max<int64_t>(P.rtemp_width, 1) * B));
    // Each recurrent matrix prepared once per call (see ForwardMatrix): a 16×128 by 128×512
    // product took 17.8 µs with W as it is, 11.6 µs with Wᵀ stored and 10.5 µs packed; the one-off
    // preparation pays for itself within a few steps.
    std::vector<std::optional<ForwardMatrix>> prepared(statics.size());
    if (Tn >= 4)
      for (const auto& g : D.gemms)
        if (!prepared[g[M_MAT]]) prepared[g[M_MAT]] = prepare_matrix<T_>(statics[g[M_MAT]], B);
    for (int64_t t = 0; t < Tn; ++t) {
      for (int64_t i = 0; i < nbuf; ++i) {
        std::tie(base[i], stride[i]) = S.at_step(i, t);
        if (D.bufs[i][0] == RTEMP) base[i] = rtemp.data(), stride[i] = P.rtemp_width;
      }
      for (int64_t s = 0; s < D.stages; ++s) {
        for (const auto& g : D.gemms) {
          if (g[M_STAGE] != s) continue;
          const int64_t N = g[M_N], K = g[M_K];
          T_* out = base[g[M_OBUF]] + g[M_OOFF];
          const int64_t so = stride[g[M_OBUF]];
          const bool init = g[M_I1BUF] >= 0;
          if (init) {  // out starts as the sum of its addends (a bias, the projected input, ...)
            std::array<const T_*, 3> x{};
            std::array<bool, 3> full{};
            int64_t n_init = 0;
            for (; n_init < 3 && g[M_I1BUF + 3 * n_init] >= 0; ++n_init)
              full[n_init] = g[M_I1W + 3 * n_init] == N;
            for (int64_t b = 0; b < B; ++b) {
              for (int64_t j = 0; j < n_init; ++j) {
                const int64_t ib = g[M_I1BUF + 3 * j];
                x[j] = base[ib] + g[M_I1OFF + 3 * j] + b * stride[ib];
              }
              init_sum(out + b * so, N, n_init, x, full);
            }
          }
          const T_* in = base[g[M_IBUF]] + g[M_IOFF];
          const auto& matrix = prepared[g[M_MAT]];
          if (matrix)
            gemm_prepared<T_>(*matrix, B, N, K, in, stride[g[M_IBUF]], init ? T_(1) : T_(0), out, so);
          else
            gemm<T_>(true, B, N, K, in, stride[g[M_IBUF]], S.statics[g[M_MAT]], init ? T_(1) : T_(0), out, so);
        }
        const bool last_stage = s == D.stages - 1;
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          int64_t* active = active_all.data() + b0;  // this chunk's active rows
          int64_t n_active = 0;
          for (int64_t b = b0; b < b1; ++b) {
            if (t < row_end(len, b, Tn)) {
              active[n_active++] = b;
            } else if (last_stage) {  // past this row's end: its stored values are zero
              for (int64_t k = 0; k < nF; ++k)
                if (D.fields[k][0] == F_FLOAT) {
                  const int64_t w = D.fields[k][1];
                  std::fill(S.sout[k] + (t * B + b) * w, S.sout[k] + (t * B + b + 1) * w, T_(0));
                }
              if (S.out) std::fill(S.out + (t * B + b) * S.Wo, S.out + (t * B + b + 1) * S.Wo, T_(0));
              if (S.saved) std::fill(S.saved + (t * B + b) * S.Ws, S.saved + (t * B + b + 1) * S.Ws, T_(0));
            }
          }
          const Rows<T_> R{active, n_active, base.data(), stride.data(), S.ticks.data(), t};
          for (int64_t i = D.fstage[s]; i < D.fstage[s + 1]; ++i) run_forward<T_>(D.fwd[i], R);
        });
      }
    }
  });

  // final states at each row's own last step
  const auto idx = at::TensorOptions().dtype(at::kLong);
  Tensor last = lengths.defined() ? (lengths - 1) : at::full({B}, Tn - 1, idx);
  Tensor rows = at::arange(B, idx);
  std::vector<Tensor> finals(nF);
  for (int64_t k = 0; k < nF; ++k) {
    const int64_t kind = D.fields[k][0];
    if (kind == F_FLOAT) {
      finals[k] = sout[k].index({last, rows});
    } else if (kind == F_DELAY) {
      // the last d pushed values of each row, oldest first: hist[len_b + j] for j < d, where
      // hist = [past0; pushed values]; the initial past fills in for rows shorter than d
      const int64_t w = D.fields[k][1], d = D.fields[k][2];
      const auto& pb = D.bufs[D.fields[k][3]];
      Tensor pushed = pb[0] == SOUT ? sout[pb[1]] : saved.narrow(2, D.fields[k][4], w);  // (T, B, w)
      Tensor hist = at::cat({init[k], pushed}, 0);                                   // (d + T, B, w)
      Tensor end = lengths.defined() ? lengths : at::full({B}, Tn, idx);
      Tensor pos = end.unsqueeze(1) + at::arange(d, idx).unsqueeze(0);               // (B, d)
      finals[k] = hist.index({pos, rows.unsqueeze(1).expand({B, d})});               // (B, d, w)
    } else {
      finals[k] = at::empty({0}, opts);
    }
  }
  Tensor y = P.out_alias < 0 ? out : sout[P.out_alias];
  std::vector<Tensor> result{y, saved, out};
  for (auto& s : sout) result.push_back(s);
  for (auto& f : finals) result.push_back(f);
  return result;
}

// The gradient of W for GEMM g: Σ_t ∂out(t)ᵀ v(t), with v's history read where it lives. A history
// that starts in the initial state (the previous state, a delay line) is two products, one over
// the steps that read the initial values and one over the rest, instead of a copy of the whole
// history joined to them.
template <typename T>
static Tensor weight_grad(const Decoded& D, const std::array<int64_t, NGCOL>& g, const Tensor& dg, const Tensor& gi,
                          const std::vector<Tensor>& init, const std::vector<Tensor>& sout, const Tensor& saved,
                          int64_t Tn, int64_t B) {
  const auto& bf = D.bufs[g[M_IBUF]];
  const int64_t off = g[M_IOFF], K = g[M_K], N = g[M_N];
  // Σ over steps [t0, t0 + n) of ∂out(t)ᵀ v, v (n, B, ·) read at columns off .. off + K
  auto part = [&](int64_t t0, int64_t n, const Tensor& v) {
    return at::mm(dg.narrow(0, t0, n).reshape({n * B, N}).t(), v.narrow(2, off, K).reshape({n * B, K}));
  };
  switch (bf[0]) {
    case GI: return part(0, Tn, gi);
    case SAVED: return part(0, Tn, saved);
    case SOUT: return part(0, Tn, sout[bf[1]]);
    case SIN: {  // v(0) = the initial state, v(t) = sout(t − 1)
      const int64_t k = bf[1];
      return part(1, Tn - 1, sout[k].narrow(0, 0, Tn - 1)).addmm_(dg.select(0, 0).t(), init[k].narrow(1, off, K));
    }
    case DELAY: {  // slot j at step t reads hist(t + j), hist = [past0 (d steps); pushed values]
      const int64_t k = bf[1], j = bf[2], d = D.fields[k][2], w = D.fields[k][1];
      const auto& pb = D.bufs[D.fields[k][3]];
      Tensor pushed = pb[0] == SOUT ? sout[pb[1]] : saved.narrow(2, D.fields[k][4], w);  // (T, B, w)
      const int64_t n0 = std::min<int64_t>(std::max<int64_t>(d - j, 0), Tn);  // steps reading the initial past
      Tensor dw = part(n0, Tn - n0, pushed.narrow(0, 0, Tn - n0));
      if (n0) dw += part(0, n0, init[k].narrow(0, j, n0));
      return dw;
    }
    default: TORCH_CHECK(false, "rnnkit program: a matrix product reads ", BUF_NAMES[bf[0]]);
  }
  return Tensor();
}

// Returns [dgi, dinit_0 .. dinit_{F-1}, dstatic_0 .. dstatic_{S-1}] (empty tensors where none).
std::vector<Tensor> run_program_backward(const Program& P, const Tensor& grad_y_, const std::vector<Tensor>& grad_final_,
                                         const Tensor& gi_, const std::vector<Tensor>& init_,
                                         const std::vector<Tensor>& statics_, const std::optional<Tensor>& lengths_,
                                         const Tensor& saved, const std::vector<Tensor>& sout, const Tensor& out) {
  const Decoded D = decode_program(P);
  const Tensor gi = gi_.contiguous(), grad_y = grad_y_.contiguous();
  const int64_t Tn = gi.size(0), B = gi.size(1), G = gi.size(2);
  const int64_t nF = static_cast<int64_t>(D.fields.size());
  std::vector<Tensor> grad_final;  // autograd may hand over expanded (stride 0) gradients
  for (const auto& g : grad_final_) grad_final.push_back(g.defined() ? g.contiguous() : g);
  std::vector<Tensor> init(nF), statics;
  for (int64_t k = 0; k < nF; ++k) init[k] = init_[k].contiguous();
  for (const auto& s : statics_) statics.push_back(s.contiguous());
  const Tensor lengths = lengths_.has_value() && lengths_->defined() ? lengths_->contiguous() : Tensor();
  const auto opts = gi.options();
  const auto idx = at::TensorOptions().dtype(at::kLong);
  const int64_t nbuf = static_cast<int64_t>(D.bufs.size());

  // a gradient every step writes in full (stores first) needs no zeros, only its rows past their
  // ends, which the loop clears as it passes them
  Tensor dgi = P.zero_gi ? at::zeros({Tn, B, G}, opts) : at::empty({Tn, B, G}, opts);
  std::vector<Tensor> din(nF), dsin(nF), dhist(nF), dg, acc;
  for (int64_t k = 0; k < nF; ++k) {
    const int64_t kind = D.fields[k][0], w = D.fields[k][1], d = D.fields[k][2];
    if (kind == F_FLOAT) {
      din[k] = at::zeros({B, w}, opts);
      dsin[k] = at::zeros({B, w}, opts);
    } else if (kind == F_DELAY) {
      dhist[k] = at::zeros({d + Tn, B, w}, opts);
      if (grad_final[k].defined() && grad_final[k].numel()) {  // the final past is hist[len_b + j]
        Tensor end = lengths.defined() ? lengths : at::full({B}, Tn, idx);
        Tensor pos = end.unsqueeze(1) + at::arange(d, idx).unsqueeze(0);  // (B, d)
        Tensor rows = at::arange(B, idx).unsqueeze(1).expand({B, d});
        dhist[k].index_put_({pos, rows}, grad_final[k], /*accumulate=*/true);
      }
    }
  }
  std::vector<bool> dg_zeroed;
  for (size_t q = 0; q < D.dg_w.size(); ++q) {
    const bool zero = !P.zero_dg.defined() || P.zero_dg.numel() <= static_cast<int64_t>(q) ||
                      P.zero_dg.data_ptr<int64_t>()[q] != 0;
    dg.push_back(zero ? at::zeros({Tn, B, D.dg_w[q]}, opts) : at::empty({Tn, B, D.dg_w[q]}, opts));
    dg_zeroed.push_back(zero);
  }
  for (size_t s = 0; s < D.acc_w.size(); ++s)
    acc.push_back(D.acc_w[s] ? at::zeros({B, D.acc_w[s]}, opts) : Tensor());
  Tensor frame = at::zeros({B, std::max<int64_t>(P.frame_width, 1)}, opts);

  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnnkit_program_backward", [&] {
    using T_ = scalar_t;
    Storage<T_> S{Tn, B, G, &D};
    S.gi = gi.data_ptr<T_>();
    for (int64_t k = 0; k < nF; ++k) {
      S.init.push_back(D.fields[k][0] == F_COUNTER ? nullptr : init[k].data_ptr<T_>());
      S.ticks.push_back(nullptr);
      S.sout.push_back(ptr<T_>(sout[k]));
      S.din.push_back(ptr<T_>(din[k]));
      S.dsin.push_back(ptr<T_>(dsin[k]));
      S.dhist.push_back(ptr<T_>(dhist[k]));
    }
    S.saved = ptr<T_>(saved);
    S.Ws = P.saved_width;
    S.out = ptr<T_>(out);
    S.Wo = P.out_width;
    for (auto& s : statics) S.statics.push_back(s.data_ptr<T_>());
    S.dgi = dgi.data_ptr<T_>();
    S.frame = frame.data_ptr<T_>();
    S.Wg = std::max<int64_t>(P.frame_width, 1);
    S.dy = grad_y.data_ptr<T_>();
    for (auto& g : dg) S.dg.push_back(ptr<T_>(g));
    for (auto& a : acc) S.acc.push_back(ptr<T_>(a));
    std::vector<const T_*> gfinal(nF, nullptr);
    for (int64_t k = 0; k < nF; ++k)
      if (D.fields[k][0] == F_FLOAT && grad_final[k].defined() && grad_final[k].numel())
        gfinal[k] = grad_final[k].data_ptr<T_>();
    const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
    const int64_t grain = grain_rows(P.saved_width + P.frame_width);
    std::vector<T_*> base(nbuf), bbase(nbuf);
    std::vector<int64_t> stride(nbuf), active_all(B);
    for (int64_t t = Tn - 1; t >= 0; --t) {
      for (int64_t k = 0; k < nF; ++k) {
        S.din[k] = ptr<T_>(din[k]);
        S.dsin[k] = ptr<T_>(dsin[k]);
      }
      for (int64_t i = 0; i < nbuf; ++i) std::tie(base[i], stride[i]) = S.at_step(i, t);
      for (int64_t i = 0; i < nbuf; ++i)  // backward keeps no scratch: those values are not readable here
        bbase[i] = (D.bufs[i][0] == RTEMP || D.bufs[i][0] == BTEMP) ? nullptr : base[i];
      for (int64_t s = D.stages - 1; s >= 0; --s) {
        const bool first = s == D.stages - 1;
        at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
          int64_t* active = active_all.data() + b0;  // this chunk's active rows
          int64_t n_active = 0;
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t end = row_end(len, b, Tn);
            if (t >= end) {  // past the row's end: nothing flows; its unzeroed gradients are zero
              if (first) {
                if (!P.zero_gi) std::fill(S.dgi + (t * B + b) * G, S.dgi + (t * B + b + 1) * G, T_(0));
                for (size_t q = 0; q < S.dg.size(); ++q) {
                  if (dg_zeroed[q] || !S.dg[q]) continue;
                  const int64_t N = D.dg_w[q];
                  std::fill(S.dg[q] + (t * B + b) * N, S.dg[q] + (t * B + b + 1) * N, T_(0));
                }
              }
              continue;
            }
            active[n_active++] = b;
            if (first) {
              // the gradient of each new state field: from step t+1 (already in din), the final
              // state if it was read here, and the output where the output is that field
              for (int64_t k = 0; k < nF; ++k) {
                if (D.fields[k][0] != F_FLOAT) continue;
                const int64_t w = D.fields[k][1];
                T_* g = S.din[k] + b * w;
                if (t == end - 1 && gfinal[k])
                  for (int64_t u = 0; u < w; ++u) g[u] += gfinal[k][b * w + u];
                if (k == P.out_alias) {
                  const T_* dyr = S.dy + (t * B + b) * S.Wo;
                  for (int64_t u = 0; u < w; ++u) g[u] += dyr[u];
                }
              }
            }
          }
          const Rows<T_> R{active, n_active, bbase.data(), stride.data(), nullptr, t};
          if (first)
            for (const auto& ins : D.pre) run_backward<T_>(ins, R);
          for (int64_t i = D.bstage[s]; i < D.bstage[s + 1]; ++i) run_backward<T_>(D.bwd[i], R);
        });
        // through each matrix product of this stage to its input: ∂v += ∂out · W
        for (size_t m = 0; m < D.gemms.size(); ++m) {
          const auto& g = D.gemms[m];
          if (g[M_STAGE] != s || g[M_GIBUF] < 0) continue;
          const int64_t N = g[M_N], K = g[M_K];
          gemm<T_>(false, B, K, N, base[g[M_GOBUF]] + g[M_GOOFF], stride[g[M_GOBUF]], S.statics[g[M_MAT]],
                   g[M_GSTORE] ? T_(0) : T_(1),
                   base[g[M_GIBUF]] + g[M_GIOFF], stride[g[M_GIBUF]]);
        }
      }
      // the gradients of the previous state become the next (earlier) step's incoming ones;
      // cleared by a plain fill (a Tensor::zero_ per field and step costs a dispatch each, about
      // as much as the fill itself at these sizes)
      auto clear = [](const Tensor& t) { std::fill(t.data_ptr<T_>(), t.data_ptr<T_>() + t.numel(), T_(0)); };
      for (int64_t k = 0; k < nF; ++k) {
        if (D.fields[k][0] != F_FLOAT) continue;
        std::swap(din[k], dsin[k]);
        clear(dsin[k]);
      }
      if (P.frame_width && P.clear_frame) clear(frame);
    }
  });

  std::vector<Tensor> result{dgi};
  for (int64_t k = 0; k < nF; ++k) {
    const int64_t kind = D.fields[k][0];
    if (kind == F_FLOAT)
      result.push_back(din[k]);
    else if (kind == F_DELAY)
      result.push_back(dhist[k].narrow(0, 0, D.fields[k][2]).clone());
    else
      result.push_back(at::empty({0}, opts));
  }
  std::vector<Tensor> dstatic(statics.size());
  for (size_t s = 0; s < statics.size(); ++s)
    if (acc[s].defined()) dstatic[s] = acc[s].sum(0);
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnnkit_program_weight_grads", [&] {
    for (size_t m = 0; m < D.gemms.size(); ++m) {
      const auto& g = D.gemms[m];
      const auto& ob = D.bufs[g[M_GOBUF]];
      const Tensor& dout = ob[0] == G_GI ? dgi : dg[ob[1]];  // (T, B, ·): the output's gradient, all steps
      Tensor dw = weight_grad<scalar_t>(D, g, dout.narrow(2, g[M_GOOFF], g[M_N]), gi, init, sout, saved, Tn, B);
      const int64_t s = g[M_MAT];
      dstatic[s] = dstatic[s].defined() ? dstatic[s] + dw : dw;
    }
  });
  const int64_t* bias = P.biases.data_ptr<int64_t>();
  for (int64_t i = 0; i < P.biases.size(0); ++i) {  // a static addend of a product: Σ over t, b of ∂out
    const auto& g = D.gemms[bias[2 * i]];
    const int64_t s = bias[2 * i + 1];
    const auto& ob = D.bufs[g[M_GOBUF]];
    const Tensor& dout = ob[0] == G_GI ? dgi : dg[ob[1]];
    Tensor db = dout.narrow(2, g[M_GOOFF], g[M_N]).sum({0, 1});
    if (statics[s].numel() == 1) db = db.sum();
    dstatic[s] = dstatic[s].defined() ? dstatic[s] + db.reshape(statics[s].sizes()) : db.reshape(statics[s].sizes());
  }
  for (auto& d : dstatic) result.push_back(d.defined() ? d : at::empty({0}, opts));
  return result;
}

pybind11::dict codes() {
  pybind11::dict ops, bufs, cols, gcols, fields;
  for (int64_t i = 0; i < NUM_OPS; ++i) ops[OP_NAMES[i]] = i;
  for (int64_t i = 0; i < NUM_BUF_KINDS; ++i) bufs[BUF_NAMES[i]] = i;
  const char* col_names[] = {"op", "w", "obuf", "ooff", "abuf", "aoff", "aw", "bbuf", "boff", "bw", "cbuf", "coff",
                             "cw", "k", "gobuf", "gooff", "gabuf", "gaoff", "gbbuf", "gboff", "gcbuf", "gcoff",
                             "flags", "xbuf", "xoff"};
  for (int64_t i = 0; i < NCOL; ++i) cols[col_names[i]] = i;
  const char* gcol_names[] = {"ibuf", "ioff", "obuf", "ooff", "mat", "n", "k", "gibuf", "gioff", "gobuf", "gooff", "stage",
                              "i1buf", "i1off", "i1w", "i2buf", "i2off", "i2w", "i3buf", "i3off", "i3w", "gstore"};
  for (int64_t i = 0; i < NGCOL; ++i) gcols[gcol_names[i]] = i;
  fields["float"] = static_cast<int64_t>(F_FLOAT);
  fields["delay"] = static_cast<int64_t>(F_DELAY);
  fields["counter"] = static_cast<int64_t>(F_COUNTER);
  pybind11::dict d;
  d["ops"] = ops;
  d["buffers"] = bufs;
  d["columns"] = cols;
  d["gemm_columns"] = gcols;
  d["fields"] = fields;
  return d;
}

}  // namespace program

void register_program(pybind11::module& m) {
  using program::Program;
  pybind11::class_<Program>(m, "Program", "A cell's step laid out for the compiled time loop (see rnnkit.engine.plan).")
      .def(pybind11::init<>())
      .def_readwrite("buffers", &Program::buffers)
      .def_readwrite("forward", &Program::forward)
      .def_readwrite("forward_p", &Program::forward_p)
      .def_readwrite("forward_stages", &Program::forward_stages)
      .def_readwrite("backward", &Program::backward)
      .def_readwrite("backward_p", &Program::backward_p)
      .def_readwrite("backward_stages", &Program::backward_stages)
      .def_readwrite("pre", &Program::pre)
      .def_readwrite("gemms", &Program::gemms)
      .def_readwrite("biases", &Program::biases)
      .def_readwrite("fields", &Program::fields)
      .def_readwrite("acc_widths", &Program::acc_widths)
      .def_readwrite("dg_widths", &Program::dg_widths)
      .def_readwrite("proj_size", &Program::proj_size)
      .def_readwrite("saved_width", &Program::saved_width)
      .def_readwrite("btemp_width", &Program::btemp_width)
      .def_readwrite("rtemp_width", &Program::rtemp_width)
      .def_readwrite("frame_width", &Program::frame_width)
      .def_readwrite("out_width", &Program::out_width)
      .def_readwrite("out_alias", &Program::out_alias)
      .def_readwrite("clear_frame", &Program::clear_frame)
      .def_readwrite("zero_gi", &Program::zero_gi)
      .def_readwrite("zero_dg", &Program::zero_dg);
  m.def("codes", &program::codes, "the instruction set's numbers: ops, buffer kinds, columns");
  m.def("program_forward", &program::run_program_forward, "run a program's forward pass over a whole sequence");
  m.def("program_backward", &program::run_program_backward, "back-propagation through time of a program");
}

}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit's fused recurrent engine: any cell's step, run as a program over a whole sequence";
  rnnkit::register_program(m);
}
