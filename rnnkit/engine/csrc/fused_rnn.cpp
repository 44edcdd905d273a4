// The fused recurrent engine: a whole sequence's forward pass and its back-propagation through
// time, in one call each, for the cells torch's own kernels do not compute.
//
// The Python side (rnnkit/engine/fused.py) computes the input projections of all steps as one
// matrix product, gi = U x + b (T, B, G), and wraps the two entry points below in a
// torch.autograd.Function. Per step, the forward pass does one GEMM for the recurrent product
// (two with a skip connection) into a preallocated buffer and one fused element-wise pass per
// batch row; the backward pass mirrors it, and the weight gradients are one GEMM over all steps
// after the loop. The equations are those of the cells' docstrings (rnnkit/cells/*.py) and of
// the written-out BPTT in rnnkit/bptt.py.
//
// Cores and wrappers covered:
//   core 0  Elman (tanh or ReLU); with `period` given, the clockwork RNN (its masked W is
//           formed in Python, the per-unit update clock here);
//   core 1  LSTM with or without forget gate, peepholes, memory blocks of k cells, cell clip;
//   core 2  GRU (torch's formulation: r multiplies W_hn h + b_hn);
//   alpha   leaky integration of every hidden-sized state field, s = α s(t-1) + (1-α) cell(.);
//   delay   a skip connection through time, gi'(t) = gi(t) + W_s h(t-d).
//
// Variable lengths: row b runs steps 0 .. len_b-1. Past its end its output is zero and nothing
// is computed; its final state is read at its own last step (and, in backward, that state's
// gradient enters there). Reversal is done in Python (rnnkit.recurrent.reverse_padded).
//
// Symbols: T time, B batch, H hidden, G = projection size (H Elman, 3H GRU, 2n+H or 3n+H LSTM
// with n = H/k blocks), d skip delay.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "vecmath.h"

#if defined(RNNKIT_BLAS_SYMBOLS)
// The Fortran BLAS that torch's own CPU library exports (MKL in torch's x86 wheels; the Python
// side defines RNNKIT_BLAS_SYMBOLS only after finding both symbols there). Calling it directly
// saves the per-step cost of building tensor views and going through the dispatcher.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}
#endif

namespace rnnkit {

using at::Tensor;
using OptT = std::optional<Tensor>;

// C (M×N) = A (M×K) · op(B) + beta · C, all row-major and contiguous: op(B) = Bᵀ of B (N×K) when
// trans_b, else B (K×N). beta is 0 (overwrite) or 1 (accumulate).
template <typename T>
static void gemm(bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, const T* B, T beta, T* C) {
  if (M == 0 || N == 0) return;
#if defined(RNNKIT_BLAS_SYMBOLS)
  // row-major C = A·op(B) is column-major Cᵀ = op(B)ᵀ·Aᵀ, and a row-major matrix read
  // column-major is its transpose
  const char ta = trans_b ? 'T' : 'N', tb = 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int lda = static_cast<int>(trans_b ? K : N), ldb = static_cast<int>(K), ldc = static_cast<int>(N);
  const T one = T(1);
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&ta, &tb, &m, &n, &k, &one, B, &lda, A, &ldb, &beta, C, &ldc);
  else
    dgemm_(&ta, &tb, &m, &n, &k, &one, B, &lda, A, &ldb, &beta, C, &ldc);
#else
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, opts);
  Tensor b = trans_b ? at::from_blob(const_cast<T*>(B), {N, K}, opts).t() : at::from_blob(const_cast<T*>(B), {K, N}, opts);
  Tensor c = at::from_blob(C, {M, N}, opts);
  if (beta == T(0))
    at::mm_out(c, a, b);
  else
    c.addmm_(a, b);
#endif
}

enum Core : int64_t { ELMAN = 0, LSTM = 1, GRU = 2 };

// Shapes and options, shared by forward and backward.
struct Layout {
  int64_t T, B, H, G;
  int64_t core;
  bool relu;         // Elman: φ = ReLU, else tanh
  bool forget_gate;  // LSTM
  int64_t k, n;      // LSTM: cells per block, number of blocks
  double clip;       // LSTM: κ, or ≤ 0 for no clipping
  int64_t d;         // skip delay, 0 for none
  bool peephole, leaky, clockwork, has_len;
  int64_t oi, of, og, oo;  // LSTM: offsets of the i, f, g, o blocks within a row of G
};

static bool defined(const OptT& t) { return t.has_value() && t->defined(); }

static Layout make_layout(int64_t T, int64_t B, int64_t G, int64_t H, int64_t core, bool relu, bool forget_gate,
                          int64_t block, double clip, int64_t delay, bool peephole, bool leaky, bool clockwork,
                          bool has_len) {
  Layout L{};
  L.T = T;
  L.B = B;
  L.G = G;
  L.H = H;
  L.core = core;
  L.relu = relu;
  L.forget_gate = forget_gate;
  L.k = block;
  L.n = L.H / block;
  L.clip = clip;
  L.d = delay;
  L.peephole = peephole;
  L.leaky = leaky;
  L.clockwork = clockwork;
  L.has_len = has_len;
  if (core == LSTM) {
    L.oi = 0;
    L.of = L.n;
    L.og = forget_gate ? 2 * L.n : L.n;
    L.oo = L.og + L.H;
    TORCH_CHECK(L.oo + L.n == L.G, "rnnkit fused: LSTM projection size ", L.G, " does not match H=", L.H,
                " block_size=", block, " forget_gate=", forget_gate);
  } else if (core == GRU) {
    TORCH_CHECK(L.G == 3 * L.H, "rnnkit fused: GRU projection size ", L.G, " != 3H = ", 3 * L.H);
  } else {
    TORCH_CHECK(core == ELMAN && L.G == L.H, "rnnkit fused: Elman projection size ", L.G, " != H = ", L.H);
  }
  return L;
}

// Rows per parallel chunk: small problems run on one thread, where a parallel region would
// cost more than it saves.
static int64_t grain_rows(const Layout& L) { return std::max<int64_t>(1, 16384 / (L.G + 2 * L.H)); }

// --- small helpers over one row ----------------------------------------------------------------

// A block vector (n,) repeated over each block's k cells → (n·k,); returns src itself for k = 1.
template <typename T>
static inline const T* expand(const T* src, int64_t n, int64_t k, T* buf) {
  if (k == 1) return src;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < k; ++r) buf[j * k + r] = src[j];
  return buf;
}

// dst[j] = Σ over block j's cells of src; a copy for k = 1.
template <typename T>
static inline void block_sum(const T* src, int64_t n, int64_t k, T* dst) {
  if (k == 1) {
    for (int64_t u = 0; u < n; ++u) dst[u] = src[u];
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    T s = 0;
    for (int64_t r = 0; r < k; ++r) s += src[j * k + r];
    dst[j] = s;
  }
}

// Peephole term of a block gate: x[j] += Σ over block j of p ⊙ c.
template <typename T>
static inline void add_peep(T* x, const T* p, const T* c, int64_t n, int64_t k) {
  if (k == 1) {
    for (int64_t u = 0; u < n; ++u) x[u] += p[u] * c[u];
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    T s = 0;
    for (int64_t r = 0; r < k; ++r) s += p[j * k + r] * c[j * k + r];
    x[j] += s;
  }
}

// Clockwork: mask[u] = 1 if unit u updates at counter value `tick` (tick mod period(u) = 0).
template <typename T>
static inline void clock_mask(const int64_t* period, int64_t tick, int64_t H, T* mask) {
  int64_t last = -1;
  T on = 0;
  for (int64_t u = 0; u < H; ++u) {
    if (period[u] != last) {  // units of one period are adjacent: one modulo per group
      last = period[u];
      on = (tick % last) == 0 ? T(1) : T(0);
    }
    mask[u] = on;
  }
}

// --- per-row forward kernels ----------------------------------------------------------------------

// Elman / clockwork. a: the recurrent product W h(t-1) (+ W_s h(t-d)) in, the inner new state
// out (φ(a) with a = gi + that, or h(t-1) where the clock does not tick). hb: the state h(t)
// (the same memory as a unless leaky).
template <typename T>
static void elman_forward_row(const Layout& L, const T* gi, T* a, const T* hp, T* hb, const T* alpha, const T* mask) {
  const int64_t H = L.H;
  for (int64_t u = 0; u < H; ++u) a[u] += gi[u];
  if (L.relu)
    relu_(a, H);
  else
    tanh_(a, H);
  if (L.clockwork)
    for (int64_t u = 0; u < H; ++u) a[u] = mask[u] != T(0) ? a[u] : hp[u];
  if (L.leaky)
    for (int64_t u = 0; u < H; ++u) hb[u] = alpha[u] * hp[u] + (T(1) - alpha[u]) * a[u];
}

// LSTM. g: the recurrent product in, activations (i, f, g, o) out. c: where the inner new cell c'
// goes (the state row cs, or ci when leaky). scratch: 4H.
template <typename T>
static void lstm_forward_row(const Layout& L, const T* gi, T* g, const T* hp, const T* cp, T* hb, T* cs, T* ci,
                             const T* p_i, const T* p_f, const T* p_o, const T* alpha, T* scratch) {
  const int64_t H = L.H, n = L.n, k = L.k;
  for (int64_t u = 0; u < L.G; ++u) g[u] += gi[u];  // the pre-activations
  T *I = g + L.oi, *F = g + L.of, *Gg = g + L.og, *O = g + L.oo;
  if (L.peephole) {
    add_peep(I, p_i, cp, n, k);  // i reads c(t-1)
    if (L.forget_gate) add_peep(F, p_f, cp, n, k);
  }
  sigmoid_(I, n);
  if (L.forget_gate) sigmoid_(F, n);
  tanh_(Gg, H);
  const T* Ie = expand(I, n, k, scratch);
  T* c = L.leaky ? ci : cs;
  if (L.forget_gate) {
    const T* Fe = expand(F, n, k, scratch + H);
    for (int64_t u = 0; u < H; ++u) c[u] = Fe[u] * cp[u] + Ie[u] * Gg[u];
  } else {
    for (int64_t u = 0; u < H; ++u) c[u] = cp[u] + Ie[u] * Gg[u];  // the constant error carousel
  }
  if (L.clip > 0) {
    const T kappa = T(L.clip);
    for (int64_t u = 0; u < H; ++u) c[u] = std::min(std::max(c[u], -kappa), kappa);
  }
  if (L.peephole) add_peep(O, p_o, c, n, k);  // o reads c(t)
  sigmoid_(O, n);
  const T* Oe = expand(O, n, k, scratch + 2 * H);
  T* tc = scratch + 3 * H;
  tanh_to(c, tc, H);
  if (L.leaky) {
    for (int64_t u = 0; u < H; ++u) {
      const T a = alpha[u];
      hb[u] = a * hp[u] + (T(1) - a) * (Oe[u] * tc[u]);
      cs[u] = a * cp[u] + (T(1) - a) * c[u];
    }
  } else {
    for (int64_t u = 0; u < H; ++u) hb[u] = Oe[u] * tc[u];
  }
}

// GRU. gi: U x + b_ih (+ W_s h(t-d) in sk); gh: W_hh h(t-1), plus b_hh (or none). Writes r, z, n
// (rzn, 3H), the W_hn h + b_hn part (ghn, H) that backward needs, and h(t).
template <typename T>
static void gru_forward_row(const Layout& L, const T* gi, const T* gh, const T* b_hh, const T* sk, const T* hp, T* rzn,
                            T* ghn, T* hb, const T* alpha) {
  const int64_t H = L.H;
  T *R = rzn, *Z = rzn + H, *N = rzn + 2 * H;
  for (int64_t u = 0; u < 2 * H; ++u) R[u] = gi[u] + gh[u];
  if (sk)
    for (int64_t u = 0; u < 2 * H; ++u) R[u] += sk[u];
  if (b_hh)
    for (int64_t u = 0; u < 2 * H; ++u) R[u] += b_hh[u];
  sigmoid_(R, 2 * H);  // r and z are adjacent
  for (int64_t u = 0; u < H; ++u) ghn[u] = gh[2 * H + u] + (b_hh ? b_hh[2 * H + u] : T(0));
  for (int64_t u = 0; u < H; ++u) N[u] = gi[2 * H + u] + (sk ? sk[2 * H + u] : T(0)) + R[u] * ghn[u];
  tanh_(N, H);
  if (L.leaky) {
    for (int64_t u = 0; u < H; ++u) {
      const T hin = (T(1) - Z[u]) * N[u] + Z[u] * hp[u];
      hb[u] = alpha[u] * hp[u] + (T(1) - alpha[u]) * hin;
    }
  } else {
    for (int64_t u = 0; u < H; ++u) hb[u] = (T(1) - Z[u]) * N[u] + Z[u] * hp[u];
  }
}

// --- per-row backward kernels ----------------------------------------------------------------------
// Each takes dh (and dc): the total gradient of the row's state after the step (scratch, modified),
// writes the pre-activation gradient dpre and the gradient of the previous state that does not go
// through W_hh (dh_next; the caller adds dpre · W_hh with one GEMM), and accumulates the
// per-row gradients of the element-wise parameters (peepholes, α).

// With leaky units: s = α s_prev + (1-α) s_in, so ∂s_prev += α ∂s, ∂s_in = (1-α) ∂s and
// ∂α += (s_prev - s_in) ∂s.
template <typename T>
static inline void leak_backward(int64_t H, const T* alpha, const T* prev, const T* inner, T* ds, T* ds_prev,
                                 T* acc_alpha) {
  for (int64_t u = 0; u < H; ++u) {
    acc_alpha[u] += (prev[u] - inner[u]) * ds[u];
    ds_prev[u] = alpha[u] * ds[u];
    ds[u] *= T(1) - alpha[u];
  }
}

template <typename T>
static void elman_backward_row(const Layout& L, const T* hin, const T* hp, const T* mask, const T* alpha, T* dh,
                               T* dpre, T* dh_next, T* acc_alpha) {
  const int64_t H = L.H;
  if (L.leaky)
    leak_backward(H, alpha, hp, hin, dh, dh_next, acc_alpha);
  else
    std::fill(dh_next, dh_next + H, T(0));
  if (L.relu) {
    for (int64_t u = 0; u < H; ++u) dpre[u] = hin[u] > T(0) ? dh[u] : T(0);
  } else {
    for (int64_t u = 0; u < H; ++u) dpre[u] = dh[u] * (T(1) - hin[u] * hin[u]);
  }
  if (L.clockwork) {
    for (int64_t u = 0; u < H; ++u) {
      dh_next[u] += (T(1) - mask[u]) * dh[u];  // a unit whose clock does not tick copies h(t-1)
      dpre[u] *= mask[u];
    }
  }
}

// scratch: 7H.
template <typename T>
static void lstm_backward_row(const Layout& L, const T* g, const T* hp, const T* cp, const T* c, T* dh, T* dc,
                              T* dpre, T* dh_next, T* dc_next, const T* p_i, const T* p_f, const T* p_o,
                              const T* alpha, T* acc_pi, T* acc_pf, T* acc_po, T* acc_alpha, T* scratch) {
  const int64_t H = L.H, n = L.n, k = L.k;
  const T *I = g + L.oi, *F = g + L.of, *Gg = g + L.og, *O = g + L.oo;
  T* tc = scratch;
  T* tmp = scratch + 4 * H;
  tanh_to(c, tc, H);
  const T* Oe = expand(O, n, k, scratch + H);
  const T* Ie = expand(I, n, k, scratch + 2 * H);
  if (L.leaky) {
    T* hin = tmp;
    for (int64_t u = 0; u < H; ++u) hin[u] = Oe[u] * tc[u];
    leak_backward(H, alpha, hp, hin, dh, dh_next, acc_alpha);
    leak_backward(H, alpha, cp, c, dc, dc_next, acc_alpha);
  } else {
    std::fill(dh_next, dh_next + H, T(0));
    std::fill(dc_next, dc_next + H, T(0));
  }
  // o: h = o ⊙ tanh(c')
  T* dO = dpre + L.oo;
  for (int64_t u = 0; u < H; ++u) tmp[u] = dh[u] * tc[u];
  block_sum(tmp, n, k, dO);
  for (int64_t j = 0; j < n; ++j) dO[j] *= O[j] * (T(1) - O[j]);
  // c': through h, and through o's peephole
  for (int64_t u = 0; u < H; ++u) dc[u] += dh[u] * Oe[u] * (T(1) - tc[u] * tc[u]);
  if (L.peephole) {
    const T* dOe = expand(static_cast<const T*>(dO), n, k, scratch + 5 * H);
    for (int64_t u = 0; u < H; ++u) {
      dc[u] += dOe[u] * p_o[u];
      acc_po[u] += dOe[u] * c[u];
    }
  }
  if (L.clip > 0) {
    // clamp passes the gradient where it did not clip; a c' on the bound counts as clipped
    const T kappa = T(L.clip);
    for (int64_t u = 0; u < H; ++u) dc[u] = std::abs(c[u]) < kappa ? dc[u] : T(0);
  }
  // g, i, f: c' = f ⊙ c + i ⊙ g
  T* dG = dpre + L.og;
  for (int64_t u = 0; u < H; ++u) dG[u] = dc[u] * Ie[u] * (T(1) - Gg[u] * Gg[u]);
  T* dI = dpre + L.oi;
  for (int64_t u = 0; u < H; ++u) tmp[u] = dc[u] * Gg[u];
  block_sum(tmp, n, k, dI);
  for (int64_t j = 0; j < n; ++j) dI[j] *= I[j] * (T(1) - I[j]);
  T* dF = dpre + L.of;
  if (L.forget_gate) {
    for (int64_t u = 0; u < H; ++u) tmp[u] = dc[u] * cp[u];
    block_sum(tmp, n, k, dF);
    for (int64_t j = 0; j < n; ++j) dF[j] *= F[j] * (T(1) - F[j]);
    const T* Fe = expand(F, n, k, scratch + 3 * H);
    for (int64_t u = 0; u < H; ++u) dc_next[u] += dc[u] * Fe[u];
  } else {
    for (int64_t u = 0; u < H; ++u) dc_next[u] += dc[u];
  }
  if (L.peephole) {
    const T* dIe = expand(static_cast<const T*>(dI), n, k, scratch + 5 * H);
    for (int64_t u = 0; u < H; ++u) {
      dc_next[u] += dIe[u] * p_i[u];
      acc_pi[u] += dIe[u] * cp[u];
    }
    if (L.forget_gate) {
      const T* dFe = expand(static_cast<const T*>(dF), n, k, scratch + 6 * H);
      for (int64_t u = 0; u < H; ++u) {
        dc_next[u] += dFe[u] * p_f[u];
        acc_pf[u] += dFe[u] * cp[u];
      }
    }
  }
}

// dgi = [dr, dz, dn] (also the skip term's gradient); dgh = [dr, dz, dn ⊙ r] (W_hh h + b_hh's).
template <typename T>
static void gru_backward_row(const Layout& L, const T* rzn, const T* ghn, const T* hp, const T* alpha, T* dh,
                             T* dgi, T* dgh, T* dh_next, T* acc_alpha, T* scratch) {
  const int64_t H = L.H;
  const T *R = rzn, *Z = rzn + H, *N = rzn + 2 * H;
  if (L.leaky) {
    T* hin = scratch;
    for (int64_t u = 0; u < H; ++u) hin[u] = (T(1) - Z[u]) * N[u] + Z[u] * hp[u];
    leak_backward(H, alpha, hp, hin, dh, dh_next, acc_alpha);
  } else {
    std::fill(dh_next, dh_next + H, T(0));
  }
  for (int64_t u = 0; u < H; ++u) {
    const T dn = dh[u] * (T(1) - Z[u]) * (T(1) - N[u] * N[u]);
    const T dz = dh[u] * (hp[u] - N[u]) * Z[u] * (T(1) - Z[u]);
    const T dr = dn * ghn[u] * R[u] * (T(1) - R[u]);
    dgi[u] = dr;
    dgi[H + u] = dz;
    dgi[2 * H + u] = dn;
    dgh[u] = dr;
    dgh[H + u] = dz;
    dgh[2 * H + u] = dn * R[u];
    dh_next[u] += dh[u] * Z[u];
  }
}

// --- drivers ------------------------------------------------------------------------------------------

template <typename T>
static const T* ptr_or_null(const OptT& t) {
  return defined(t) ? t->data_ptr<T>() : nullptr;
}

static Tensor contig(const Tensor& t) { return t.contiguous(); }
static OptT contig(const OptT& t) { return defined(t) ? OptT(t->contiguous()) : OptT(); }

// The step at which row b ends (exclusive).
static inline int64_t row_end(const int64_t* len, int64_t b, int64_t T) { return len ? len[b] : T; }

// Returns {y, h_final, c_final, past_final, acts, cstate, cinner, ghn}; absent ones undefined.
//   y (T, B, H): h(t), zero past each row's end; also the h(t-1) the backward GEMMs read.
//   acts: LSTM (T, B, G) gate activations; GRU (T, B, 3H) r, z, n; Elman (T, B, H) the inner
//   new state when leaky.  cstate (T, B, H): LSTM c(t).  cinner: leaky LSTM's c' before the
//   leak.  ghn (T, B, H): GRU's W_hn h(t-1) + b_hn.
std::vector<Tensor> fused_forward(const Tensor& gi_, const Tensor& h0_, const OptT& c0_, const OptT& past0_,
                                  const Tensor& w_hh_, const OptT& b_hh_, const OptT& w_skip_, const OptT& p_i_,
                                  const OptT& p_f_, const OptT& p_o_, const OptT& alpha_, const OptT& lengths_,
                                  const OptT& tick0_, const OptT& period_, int64_t core, bool relu, bool forget_gate,
                                  int64_t block, double clip, int64_t delay) {
  const Tensor gi = contig(gi_), h0 = contig(h0_), w_hh = contig(w_hh_);
  const OptT c0 = contig(c0_), past0 = contig(past0_), b_hh = contig(b_hh_), w_skip = contig(w_skip_);
  const OptT p_i = contig(p_i_), p_f = contig(p_f_), p_o = contig(p_o_), alpha = contig(alpha_);
  const OptT lengths = contig(lengths_), tick0 = contig(tick0_), period = contig(period_);
  TORCH_CHECK(gi.device().is_cpu(), "rnnkit fused engine runs on CPU tensors only, got ", gi.device());
  const Layout L = make_layout(gi.size(0), gi.size(1), gi.size(2), h0.size(1), core, relu, forget_gate, block, clip, delay, defined(p_i), defined(alpha),
                               defined(period), defined(lengths));
  const int64_t T = L.T, B = L.B, H = L.H, G = L.G, d = L.d;
  const auto opts = gi.options();

  Tensor y = at::empty({T, B, H}, opts);
  Tensor acts, cstate, cinner, ghn, gh, sk;
  if (core == LSTM) {
    acts = at::empty({T, B, G}, opts);
    cstate = at::empty({T, B, H}, opts);
    if (L.leaky) cinner = at::empty({T, B, H}, opts);
  } else if (core == GRU) {
    acts = at::empty({T, B, G}, opts);
    ghn = at::empty({T, B, H}, opts);
    gh = at::empty({B, G}, opts);
    if (d) sk = at::empty({B, G}, opts);
  } else if (L.leaky) {
    acts = at::empty({T, B, H}, opts);
  }
  const int64_t grain = grain_rows(L);

  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnnkit_fused_forward", [&] {
    using T_ = scalar_t;
    const int64_t* len = L.has_len ? lengths->data_ptr<int64_t>() : nullptr;
    const int64_t* tick = L.clockwork ? tick0->data_ptr<int64_t>() : nullptr;
    const int64_t* per = L.clockwork ? period->data_ptr<int64_t>() : nullptr;
    const T_ *pi = ptr_or_null<T_>(p_i), *pf = ptr_or_null<T_>(p_f), *po = ptr_or_null<T_>(p_o);
    const T_* al = ptr_or_null<T_>(alpha);
    T_* yp = y.data_ptr<T_>();
    const T_* w_p = w_hh.data_ptr<T_>();
    const T_* ws_p = d ? w_skip->data_ptr<T_>() : nullptr;
    const T_* bhh_p = core == GRU ? ptr_or_null<T_>(b_hh) : nullptr;
    const T_* past_p = d ? past0->data_ptr<T_>() : nullptr;
    T_* gh_p = core == GRU ? gh.data_ptr<T_>() : nullptr;
    T_* sk_p = (core == GRU && d) ? sk.data_ptr<T_>() : nullptr;
    for (int64_t t = 0; t < T; ++t) {
      const T_* hprev_p = t == 0 ? h0.data_ptr<T_>() : yp + (t - 1) * B * H;
      const T_* cprev_p = core == LSTM ? (t == 0 ? c0->data_ptr<T_>() : cstate.data_ptr<T_>() + (t - 1) * B * H) : nullptr;
      T_* acts_t = acts.defined() ? acts.data_ptr<T_>() + t * B * acts.size(2) : nullptr;
      T_* cs_t = core == LSTM ? cstate.data_ptr<T_>() + t * B * H : nullptr;
      T_* ci_t = cinner.defined() ? cinner.data_ptr<T_>() + t * B * H : nullptr;
      T_* ghn_t = core == GRU ? ghn.data_ptr<T_>() + t * B * H : nullptr;
      const T_* gi_t = gi.data_ptr<T_>() + t * B * G;
      T_* y_t = yp + t * B * H;
      // h(t-d), read by a skip connection: from the initial past for t < d
      const T_* hist_p = d ? (t < d ? past_p + t * B * H : yp + (t - d) * B * H) : nullptr;
      // the recurrent product W h(t-1) (+ W_s h(t-d)): one GEMM (two with a skip connection)
      // straight into this step's buffer; the element-wise pass adds gi
      T_* target = core == GRU ? gh_p : (core == LSTM || L.leaky) ? acts_t : y_t;
      gemm<T_>(true, B, G, H, hprev_p, w_p, T_(0), target);
      if (d) gemm<T_>(true, B, G, H, hist_p, ws_p, core == GRU ? T_(0) : T_(1), core == GRU ? sk_p : target);
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        std::vector<T_> scratch(5 * H);
        for (int64_t b = b0; b < b1; ++b) {
          T_* hb = y_t + b * H;
          if (t >= row_end(len, b, T)) {  // past this row's end: output zero, nothing to compute
            std::fill(hb, hb + H, T_(0));
            if (cs_t) std::fill(cs_t + b * H, cs_t + (b + 1) * H, T_(0));
            continue;
          }
          const T_* hp = hprev_p + b * H;
          if (core == LSTM) {
            lstm_forward_row(L, gi_t + b * G, acts_t + b * G, hp, cprev_p + b * H, hb, cs_t + b * H,
                             ci_t ? ci_t + b * H : nullptr, pi, pf, po, al, scratch.data());
          } else if (core == GRU) {
            gru_forward_row(L, gi_t + b * G, gh_p + b * G, bhh_p, sk_p ? sk_p + b * G : nullptr, hp, acts_t + b * G,
                            ghn_t + b * H, hb, al);
          } else {
            T_* a = L.leaky ? acts_t + b * H : hb;
            T_* mask = scratch.data();
            if (L.clockwork) clock_mask(per, tick[b] + t, H, mask);
            elman_forward_row(L, gi_t + b * G, a, hp, hb, al, mask);
          }
        }
      });
    }
  });

  // final states at each row's own last step
  const auto idx_opts = at::TensorOptions().dtype(at::kLong);
  Tensor last = L.has_len ? (*lengths - 1) : at::full({B}, T - 1, idx_opts);
  Tensor rows = at::arange(B, idx_opts);
  Tensor h_final = y.index({last, rows});
  Tensor c_final = core == LSTM ? cstate.index({last, rows}) : Tensor();
  Tensor past_final;
  if (d) {
    // the last d outputs of each row, oldest first: hist[len_b + j] for j < d, where
    // hist = [past0; y]; the initial past fills in for rows shorter than d
    past_final = at::empty({B, d, H}, opts);
    const int64_t* lp = L.has_len ? lengths->data_ptr<int64_t>() : nullptr;
    const int64_t row_bytes = H * gi.element_size();
    auto* dst = static_cast<char*>(past_final.data_ptr());
    const auto* past_b = static_cast<const char*>(past0->data_ptr());
    const auto* y_b = static_cast<const char*>(y.data_ptr());
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < d; ++j) {
        const int64_t pos = row_end(lp, b, T) + j;
        const char* src = pos < d ? past_b + (pos * B + b) * row_bytes : y_b + ((pos - d) * B + b) * row_bytes;
        std::memcpy(dst + (b * d + j) * row_bytes, src, row_bytes);
      }
    }
  }
  return {y, h_final, c_final, past_final, acts, cstate, cinner, ghn};
}

// Returns {d_gi, d_h0, d_c0, d_past0 (d, B, H), d_w_hh, d_b_hh, d_w_skip, d_p_i, d_p_f, d_p_o, d_alpha}.
std::vector<Tensor> fused_backward(const Tensor& grad_y_, const Tensor& grad_h_, const OptT& grad_c_,
                                   const OptT& grad_past_, const Tensor& y, const OptT& acts_, const OptT& cstate_,
                                   const OptT& cinner_, const OptT& ghn_, const Tensor& h0_, const OptT& c0_,
                                   const OptT& past0_, const Tensor& w_hh_, const OptT& b_hh_, const OptT& w_skip_,
                                   const OptT& p_i_, const OptT& p_f_, const OptT& p_o_, const OptT& alpha_,
                                   const OptT& lengths_, const OptT& tick0_, const OptT& period_, int64_t core,
                                   bool relu, bool forget_gate, int64_t block, double clip, int64_t delay,
                                   int64_t proj_size) {
  const Tensor h0 = contig(h0_), w_hh = contig(w_hh_), grad_h = contig(grad_h_);
  const OptT c0 = contig(c0_), past0 = contig(past0_), b_hh = contig(b_hh_), w_skip = contig(w_skip_);
  const OptT p_i = contig(p_i_), p_f = contig(p_f_), p_o = contig(p_o_), alpha = contig(alpha_);
  const OptT lengths = contig(lengths_), tick0 = contig(tick0_), period = contig(period_);
  const OptT acts = contig(acts_), cstate = contig(cstate_), cinner = contig(cinner_), ghn = contig(ghn_);
  const OptT grad_c = contig(grad_c_);
  const int64_t T = y.size(0), B = y.size(1), H = y.size(2), G = proj_size, d = delay;
  const Layout L = make_layout(T, B, G, H, core, relu, forget_gate,
                               block, clip, delay, defined(p_i), defined(alpha), defined(period), defined(lengths));
  const auto opts = y.options();

  // dhist (d + T, B, H): the gradient of hist = [past0; y], the sequence the skip connection reads
  // (hist[t] = h(t-d)); its last T rows, dY, are the gradients reaching the outputs. With a skip
  // connection it also collects the gradients flowing back d steps, so it is a private copy.
  Tensor dhist, dY;
  if (d) {
    dhist = at::zeros({d + T, B, H}, opts);
    dY = dhist.slice(0, d);
    dY.copy_(grad_y_);
    if (defined(grad_past_)) {
      // the final past holds, for row b, hist[len_b + j] for j < d
      const auto idx_opts = at::TensorOptions().dtype(at::kLong);
      Tensor end = L.has_len ? *lengths : at::full({B}, T, idx_opts);
      Tensor pos = end.unsqueeze(1) + at::arange(d, idx_opts).unsqueeze(0);  // (B, d)
      Tensor rows = at::arange(B, idx_opts).unsqueeze(1).expand({B, d});
      dhist.index_put_({pos, rows}, *grad_past_, /*accumulate=*/true);
    }
  } else {
    dY = grad_y_.contiguous();
  }
  Tensor dpre = at::empty({T, B, G}, opts);               // the gradient of gi (of gi' with a skip)
  Tensor dgh = core == GRU ? at::empty({T, B, G}, opts) : Tensor();  // GRU: of W_hh h + b_hh
  Tensor& drec = core == GRU ? dgh : dpre;                 // what multiplies W_hh
  Tensor dh = at::zeros({B, H}, opts), dh_next = at::empty({B, H}, opts);
  Tensor dc, dc_next;
  if (core == LSTM) {
    dc = at::zeros({B, H}, opts);
    dc_next = at::empty({B, H}, opts);
  }
  Tensor acc_pi, acc_pf, acc_po, acc_alpha;  // per-row sums over time, reduced over rows at the end
  if (L.peephole) {
    acc_pi = at::zeros({B, H}, opts);
    acc_po = at::zeros({B, H}, opts);
    if (forget_gate) acc_pf = at::zeros({B, H}, opts);
  }
  if (L.leaky) acc_alpha = at::zeros({B, H}, opts);
  const Tensor ws = d ? *w_skip : Tensor();
  const int64_t grain = grain_rows(L);

  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnnkit_fused_backward", [&] {
    using T_ = scalar_t;
    const int64_t* len = L.has_len ? lengths->data_ptr<int64_t>() : nullptr;
    const int64_t* tick = L.clockwork ? tick0->data_ptr<int64_t>() : nullptr;
    const int64_t* per = L.clockwork ? period->data_ptr<int64_t>() : nullptr;
    const T_ *pi = ptr_or_null<T_>(p_i), *pf = ptr_or_null<T_>(p_f), *po = ptr_or_null<T_>(p_o);
    const T_* al = ptr_or_null<T_>(alpha);
    const T_* yp = y.data_ptr<T_>();
    const T_* gh_fin = grad_h.data_ptr<T_>();
    const T_* gc_fin = ptr_or_null<T_>(grad_c);
    T_* a_pi = acc_pi.defined() ? acc_pi.data_ptr<T_>() : nullptr;
    T_* a_pf = acc_pf.defined() ? acc_pf.data_ptr<T_>() : nullptr;
    T_* a_po = acc_po.defined() ? acc_po.data_ptr<T_>() : nullptr;
    T_* a_al = acc_alpha.defined() ? acc_alpha.data_ptr<T_>() : nullptr;
    const int64_t acts_w = defined(acts) ? acts->size(2) : 0;
    const T_* w_p = w_hh.data_ptr<T_>();
    const T_* ws_p = d ? ws.data_ptr<T_>() : nullptr;
    for (int64_t t = T - 1; t >= 0; --t) {
      const T_* hprev_p = t == 0 ? h0.data_ptr<T_>() : yp + (t - 1) * B * H;
      const T_* cprev_p = core == LSTM ? (t == 0 ? c0->data_ptr<T_>() : cstate->data_ptr<T_>() + (t - 1) * B * H) : nullptr;
      const T_* acts_t = defined(acts) ? acts->data_ptr<T_>() + t * B * acts_w : nullptr;
      const T_* c_t = core == LSTM ? (L.leaky ? cinner : cstate)->data_ptr<T_>() + t * B * H : nullptr;
      const T_* ghn_t = core == GRU ? ghn->data_ptr<T_>() + t * B * H : nullptr;
      const T_* y_t = yp + t * B * H;
      const T_* dY_t = dY.data_ptr<T_>() + t * B * H;
      T_* dpre_t = dpre.data_ptr<T_>() + t * B * G;
      T_* dgh_t = core == GRU ? dgh.data_ptr<T_>() + t * B * G : nullptr;
      const T_* dh_p = dh.data_ptr<T_>();
      T_* dhn_p = dh_next.data_ptr<T_>();
      const T_* dc_p = core == LSTM ? dc.data_ptr<T_>() : nullptr;
      T_* dcn_p = core == LSTM ? dc_next.data_ptr<T_>() : nullptr;
      at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
        std::vector<T_> scratch(10 * H);
        T_* dhs = scratch.data() + 7 * H;  // this row's total ∂h(t)
        T_* dcs = scratch.data() + 8 * H;  // and ∂c(t)
        T_* mask = scratch.data() + 9 * H;
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t end = row_end(len, b, T);
          if (t >= end) {  // past the row's end: nothing flows
            std::fill(dpre_t + b * G, dpre_t + (b + 1) * G, T_(0));
            if (dgh_t) std::fill(dgh_t + b * G, dgh_t + (b + 1) * G, T_(0));
            std::fill(dhn_p + b * H, dhn_p + (b + 1) * H, T_(0));
            if (dcn_p) std::fill(dcn_p + b * H, dcn_p + (b + 1) * H, T_(0));
            continue;
          }
          const bool last_step = t == end - 1;  // the final state was read here
          for (int64_t u = 0; u < H; ++u)
            dhs[u] = dh_p[b * H + u] + dY_t[b * H + u] + (last_step ? gh_fin[b * H + u] : T_(0));
          const T_* hp = hprev_p + b * H;
          if (core == LSTM) {
            for (int64_t u = 0; u < H; ++u)
              dcs[u] = dc_p[b * H + u] + (last_step && gc_fin ? gc_fin[b * H + u] : T_(0));
            lstm_backward_row(L, acts_t + b * G, hp, cprev_p + b * H, c_t + b * H, dhs, dcs, dpre_t + b * G,
                              dhn_p + b * H, dcn_p + b * H, pi, pf, po, al, a_pi ? a_pi + b * H : nullptr,
                              a_pf ? a_pf + b * H : nullptr, a_po ? a_po + b * H : nullptr,
                              a_al ? a_al + b * H : nullptr, scratch.data());
          } else if (core == GRU) {
            gru_backward_row(L, acts_t + b * G, ghn_t + b * H, hp, al, dhs, dpre_t + b * G, dgh_t + b * G,
                             dhn_p + b * H, a_al ? a_al + b * H : nullptr, scratch.data());
          } else {
            const T_* hin = L.leaky ? acts_t + b * H : y_t + b * H;
            if (L.clockwork) clock_mask(per, tick[b] + t, H, mask);
            elman_backward_row(L, hin, hp, mask, al, dhs, dpre_t + b * G, dhn_p + b * H,
                               a_al ? a_al + b * H : nullptr);
          }
        }
      });
      // through W_hh to h(t-1), and through W_s to h(t-d)
      gemm<T_>(false, B, H, G, (core == GRU ? dgh_t : dpre_t), w_p, T_(1), dhn_p);
      if (d) gemm<T_>(false, B, H, G, dpre_t, ws_p, T_(1), dhist.data_ptr<T_>() + t * B * H);
      std::swap(dh, dh_next);
      if (core == LSTM) std::swap(dc, dc_next);
    }
  });

  // weight gradients: one GEMM over all steps, Σ_t ∂pre(t)ᵀ h(t-1)
  Tensor dw_hh = at::mm(drec[0].t(), h0);
  if (T > 1) dw_hh.addmm_(drec.slice(0, 1).reshape({(T - 1) * B, G}).t(), y.slice(0, 0, T - 1).reshape({(T - 1) * B, H}));
  Tensor db_hh = (core == GRU && defined(b_hh)) ? dgh.sum({0, 1}) : Tensor();
  Tensor dw_skip;
  if (d) {  // Σ_t ∂gi'(t)ᵀ h(t-d)
    const int64_t m = std::min(d, T);
    dw_skip = at::mm(dpre.slice(0, 0, m).reshape({m * B, G}).t(), past0->slice(0, 0, m).reshape({m * B, H}));
    if (T > d)
      dw_skip.addmm_(dpre.slice(0, d).reshape({(T - d) * B, G}).t(), y.slice(0, 0, T - d).reshape({(T - d) * B, H}));
  }
  auto sum_rows = [](const Tensor& t) { return t.defined() ? t.sum(0) : Tensor(); };
  Tensor dpast0 = d ? dhist.slice(0, 0, d).clone() : Tensor();
  return {dpre, dh, core == LSTM ? dc : Tensor(), dpast0, dw_hh, db_hh, dw_skip,
          sum_rows(acc_pi), sum_rows(acc_pf), sum_rows(acc_po), sum_rows(acc_alpha)};
}

}  // namespace rnnkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkit's fused recurrent engine: whole-sequence forward and BPTT on CPU";
  m.def("forward", &rnnkit::fused_forward, "fused forward over a whole sequence");
  m.def("backward", &rnnkit::fused_backward, "fused back-propagation through time");
}
