// The two loops of lstm_function.py (_run_forward and _run_backward), step for step the same
// equations (the rounding may differ in the last bit), for a sequence whose every row runs every
// step, on the CPU, in float32 or float64.
//
// Each step is one product (ATen's mm, or oneDNN's inner product where matmul.py routes a product
// of that size: see `Product`), ATen's σ (the same kernels as from Python) and the rest as plain
// loops over the rows, with no Python between the calls. At small sizes a step's dozen calls from
// Python cost several times its work; at large ones they still cost a few percent, and the plain
// backward loop also takes the local derivatives that the Python loops take in a pass of their own.
// lstm_function.py's docstring explains the layout: rows step after step, gates (i, f, σ(2a_g), o)
// per row, and the cell state kept as m_t = −2c_t.

#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>

using at::Tensor;

// The loops over a step's rows are compiled for AVX-512 and AVX2 besides the baseline, the one the
// processor has being picked when the module loads (an ifunc: x86-64 with glibc, a compiler with
// target_clones; elsewhere the baseline only). Only plain functions are cloned (clang clones no
// templates): the float and double ones at the end of this namespace.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTORIZED __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef VECTORIZED
#define VECTORIZED
#endif
#define ALWAYS_INLINE inline __attribute__((always_inline))

namespace {

// m_t = −2c_t = f_t ⊙ m_{t-1} − 2 i_t ⊙ (2s_t − 1), for gates (i, f, s, o) of each row, s_t = σ(2a_g)
template <typename T>
ALWAYS_INLINE void cell_state_of(const T* gates, const T* m_prev, T* m, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* i = gates + r * 4 * hidden;
    const T* f = i + hidden;
    const T* s = f + hidden;
    const T* mp = m_prev + r * hidden;
    T* mt = m + r * hidden;
    for (int64_t k = 0; k < hidden; ++k) {
      mt[k] = f[k] * mp[k] - T(2) * i[k] * (T(2) * s[k] - T(1));  // c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, times −2
    }
  }
}

// h_t = o_t ⊙ tanh(c_t) = o_t − 2 o_t ⊙ σ(−2c_t)
template <typename T>
ALWAYS_INLINE void hidden_state_of(const T* gates, const T* sig_m, T* h, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* o = gates + r * 4 * hidden + 3 * hidden;
    const T* sm = sig_m + r * hidden;
    T* ht = h + r * hidden;
    for (int64_t k = 0; k < hidden; ++k) {
      ht[k] = o[k] - T(2) * o[k] * sm[k];  // h_t = o_t ⊙ tanh(c_t), tanh(c_t) = 1 − 2σ(−2c_t)
    }
  }
}

// One step back for one row: writes ∂L/∂a_t into d_i, d_f, d_g, d_o from the row's gates i, f, s, o,
// σ(−2c_t) (sm), −2c_{t-1} (mp) and ∂L/∂h_t (u); c goes from ∂L/∂c_t (the part from step t + 1) to
// ∂L/∂c_{t-1}. Each σ'(a) = σ(a)(1 − σ(a)) is taken from the gate itself; the products are grouped
// as the Python loops group them (a local derivative first, as ATen's sigmoid_backward forms it,
// then times ∂L/∂h_t or ∂L/∂c_t). No two of the pointers overlap.
template <typename T>
ALWAYS_INLINE void gate_gradients_of_row(T* __restrict__ d_i, T* __restrict__ d_f, T* __restrict__ d_g,
                                         T* __restrict__ d_o, const T* __restrict__ i, const T* __restrict__ f,
                                         const T* __restrict__ s, const T* __restrict__ o, const T* __restrict__ sm,
                                         const T* __restrict__ mp, const T* __restrict__ u, T* __restrict__ c,
                                         int64_t hidden) {
  for (int64_t k = 0; k < hidden; ++k) {
    const T tanh_c = sm[k] * T(-2) + T(1);                          // tanh(c_t) = 1 − 2σ(−2c_t)
    d_o[k] = tanh_c * (T(1) - o[k]) * o[k] * u[k];                  // ∂L/∂a_o = ∂L/∂h_t ⊙ tanh(c_t) ⊙ σ'(a_o)
    const T dc = c[k] + u[k] * (o[k] * (T(1) - tanh_c * tanh_c));   // ∂L/∂c_t += ∂L/∂h_t ⊙ o_t ⊙ (1 − tanh²(c_t))
    d_i[k] = (s[k] * T(2) - T(1)) * (T(1) - i[k]) * i[k] * dc;      // ∂L/∂a_i = ∂L/∂c_t ⊙ g_t ⊙ σ'(a_i), g_t = 2s_t − 1
    d_f[k] = mp[k] * T(-0.5) * (T(1) - f[k]) * f[k] * dc;           // ∂L/∂a_f = ∂L/∂c_t ⊙ c_{t-1} ⊙ σ'(a_f)
    d_g[k] = i[k] * T(4) * (T(1) - s[k]) * s[k] * dc;               // ∂L/∂a_g = ∂L/∂c_t ⊙ i_t ⊙ tanh'(a_g), tanh'(a_g) = 4σ'(2a_g)
    c[k] = dc * f[k];                                               // ∂L/∂c_{t-1} = ∂L/∂c_t ⊙ f_t
  }
}

// One step back for a step's rows: d_gates (rows, 4H) gets ∂L/∂a_t, from gates (rows, 4H) and
// sig_m, m_prev, d_h (rows, H); d_c (rows, H) as above.
template <typename T>
ALWAYS_INLINE void gate_gradients_of(T* d_gates, const T* gates, const T* sig_m, const T* m_prev, const T* d_h, T* d_c,
                                     int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    T* d = d_gates + r * 4 * hidden;
    const T* g = gates + r * 4 * hidden;
    const int64_t at = r * hidden;
    gate_gradients_of_row(d, d + hidden, d + 2 * hidden, d + 3 * hidden, g, g + hidden, g + 2 * hidden, g + 3 * hidden,
                          sig_m + at, m_prev + at, d_h + at, d_c + at, hidden);
  }
}

// The three loops in float and in double, each cloned (see VECTORIZED)
#define CLONED_LOOPS(T)                                                                                               \
  VECTORIZED void cell_state(const T* gates, const T* m_prev, T* m, int64_t rows, int64_t hidden) {                   \
    cell_state_of(gates, m_prev, m, rows, hidden);                                                                    \
  }                                                                                                                   \
  VECTORIZED void hidden_state(const T* gates, const T* sig_m, T* h, int64_t rows, int64_t hidden) {                  \
    hidden_state_of(gates, sig_m, h, rows, hidden);                                                                   \
  }                                                                                                                   \
  VECTORIZED void gate_gradients(T* d_gates, const T* gates, const T* sig_m, const T* m_prev, const T* d_h, T* d_c,   \
                                 int64_t rows, int64_t hidden) {                                                      \
    gate_gradients_of(d_gates, gates, sig_m, m_prev, d_h, d_c, rows, hidden);                                         \
  }
CLONED_LOOPS(float)
CLONED_LOOPS(double)
#undef CLONED_LOOPS

// oneDNN's inner product, torch.ops.mkldnn._linear_pointwise, with its C++ signature checked when
// first looked up (an error, not a wrong call, should a torch change it): see onednn_linear_found
using OneDnnLinear = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view,
                            c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>);

const c10::TypedOperatorHandle<OneDnnLinear>& onednn_linear() {
  static const auto linear =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "").typed<OneDnnLinear>();
  return linear;
}

// a @ Wᵀ (+ bias) for a weight prepared by matmul.StepWeight: reordered for oneDNN's inner product
// (the op torch.ops.mkldnn._linear_pointwise, called here through the dispatcher), or Wᵀ itself
// for ATen's mm.
struct Product {
  Tensor w;
  bool onednn;

  // a @ Wᵀ (+ bias), a new tensor (oneDNN), or written into out (ATen) and out returned
  Tensor into(Tensor out, const Tensor& a, const std::optional<Tensor>& bias) const {
    if (onednn) {
      return onednn_linear().call(a, w, bias, "none", c10::List<std::optional<c10::Scalar>>(), "");
    }
    return bias ? at::addmm_out(out, *bias, a, w) : at::mm_out(out, a, w);
  }

  // out = other + a @ Wᵀ
  void add(Tensor out, const Tensor& a, const Tensor& other) const {
    if (onednn) {
      at::add_out(out, into(Tensor(), a, std::nullopt), other);
    } else {
      at::addmm_out(out, other, a, w);
    }
  }

  // out += a @ Wᵀ
  void add_to(Tensor out, const Tensor& a) const {
    if (onednn) {
      out.add_(into(Tensor(), a, std::nullopt));
    } else {
      out.addmm_(a, w);
    }
  }
};

void check(const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "step_loops: expected CPU tensors");
    TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(), "step_loops: expected tensors of one dtype");
  }
}

// A product's weight for outputs × inputs: W (outputs, inputs) for oneDNN, Wᵀ for ATen (see Product)
void check_weight(const Product& product, int64_t outputs, int64_t inputs, const char* name) {
  const auto expected = product.onednn ? std::vector<int64_t>{outputs, inputs} : std::vector<int64_t>{inputs, outputs};
  TORCH_CHECK(product.w.dim() == 2 && product.w.sizes() == c10::IntArrayRef(expected), "step_loops: ", name,
              ": expected ", c10::IntArrayRef(expected), ", got ", product.w.sizes());
}

}  // namespace

// x_rows (R, I) the input rows, step after step; w_ih and bias give W_ih x_t + b, taken
// steps_per_block steps at a time (the g rows of W_ih, b and W_hh doubled: 2a_g); gates (R, 4H)
// gets (i_t, f_t, σ(2a_g), o_t); h, m, sig_m (R, H) get h_t, −2c_t and σ(−2c_t). R is steps × B,
// B the rows of h0. The products: see Product (w_ih, w_hh as matmul.StepWeight prepared them).
void run_forward(Tensor x_rows, Tensor w_ih, bool w_ih_onednn, std::optional<Tensor> bias, Tensor w_hh,
                 bool w_hh_onednn, int64_t steps_per_block, Tensor gates, Tensor h, Tensor m, Tensor sig_m, Tensor h0,
                 Tensor m0) {
  check({x_rows, gates, h, m, sig_m, h0, m0, w_ih, w_hh});
  TORCH_CHECK(x_rows.is_contiguous() && gates.is_contiguous() && h.is_contiguous() && m.is_contiguous() &&
                  sig_m.is_contiguous() && h0.is_contiguous() && m0.is_contiguous(),
              "step_loops: expected contiguous buffers");
  const int64_t batch = h0.size(0), hidden = h0.size(1), steps = batch > 0 ? gates.size(0) / batch : 0;
  TORCH_CHECK(batch > 0 && steps > 0 && steps_per_block > 0 && gates.size(0) == steps * batch &&
                  x_rows.size(0) == gates.size(0) && gates.size(1) == 4 * hidden && h.sizes() == m.sizes() &&
                  h.sizes() == sig_m.sizes() && h.size(0) == gates.size(0) && h.size(1) == hidden &&
                  m0.sizes() == h0.sizes(),
              "step_loops.run_forward: shapes do not fit");
  const Product input{w_ih, w_ih_onednn}, recurrent{w_hh, w_hh_onednn};
  check_weight(input, 4 * hidden, x_rows.size(1), "w_ih");
  check_weight(recurrent, 4 * hidden, hidden, "w_hh");
  if (bias) {
    check({gates, *bias});
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * hidden, "step_loops: bias: expected (", 4 * hidden, "), got ", bias->sizes());
  }
  c10::InferenceMode no_autograd;
  Tensor h_prev = h0, m_prev = m0;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "run_forward", [&] {
    for (int64_t first = 0; first < steps; first += steps_per_block) {
      const int64_t block = std::min(steps_per_block, steps - first);
      Tensor block_gates = gates.narrow(0, first * batch, block * batch);
      // W_ih x_t + b of the block's steps, while its steps come (with ATen, written in their gates' place)
      Tensor projection = input.into(block_gates, x_rows.narrow(0, first * batch, block * batch), bias);
      for (int64_t t = first; t < first + block; ++t) {
        Tensor a = gates.narrow(0, t * batch, batch);
        Tensor m_t = m.narrow(0, t * batch, batch), sig_m_t = sig_m.narrow(0, t * batch, batch);
        Tensor h_t = h.narrow(0, t * batch, batch);
        // a_t = W_ih x_t + b + W_hh h_{t-1}
        if (input.onednn) {
          recurrent.add(a, h_prev, projection.narrow(0, (t - first) * batch, batch));
        } else {  // W_ih x_t + b is in a already
          recurrent.add_to(a, h_prev);
        }
        a.sigmoid_();  // i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o); s_t = σ(2a_g), g_t = 2s_t − 1
        cell_state(a.const_data_ptr<scalar_t>(), m_prev.const_data_ptr<scalar_t>(), m_t.data_ptr<scalar_t>(), batch, hidden);
        at::sigmoid_out(sig_m_t, m_t);  // σ(−2c_t), and tanh(c_t) = 1 − 2σ(−2c_t)
        hidden_state(a.const_data_ptr<scalar_t>(), sig_m_t.const_data_ptr<scalar_t>(), h_t.data_ptr<scalar_t>(), batch, hidden);
        h_prev = h_t;
        m_prev = m_t;
      }
    }
  });
}

// d_gates (R, 4H) gets ∂L/∂a of every row; gates (R, 4H) and sig_m (R, H) are the forward pass's,
// m_all (B + R, H) −2c_0 then −2c_t of every row; d_out (B, T, H) ∂L/∂out_t, batch-first, step t
// at position T − 1 − t if reverse; d_h_last, d_c_last (B, H) ∂L/∂h_T, ∂L/∂c_T; w_hh, w_hh_onednn:
// the product with W_hh (see Product: Wᵀ is W_hh itself, (4H, H)). Returns (∂L/∂h_0, or an empty
// tensor unless need_h0; ∂L/∂c_0).
std::vector<Tensor> run_backward(Tensor d_gates, Tensor gates, Tensor sig_m, Tensor m_all, Tensor d_out, Tensor d_h_last,
                                 Tensor d_c_last, Tensor w_hh, bool w_hh_onednn, bool reverse, bool need_h0) {
  check({d_gates, gates, sig_m, m_all, d_out, d_h_last, d_c_last, w_hh});
  TORCH_CHECK(d_gates.is_contiguous() && gates.is_contiguous() && sig_m.is_contiguous() && m_all.is_contiguous(),
              "step_loops: expected contiguous buffers");
  const int64_t batch = d_c_last.size(0), hidden = d_c_last.size(1), steps = batch > 0 ? d_gates.size(0) / batch : 0;
  TORCH_CHECK(batch > 0 && steps > 0 && d_gates.size(0) == steps * batch && d_gates.sizes() == gates.sizes() &&
                  d_gates.size(1) == 4 * hidden && sig_m.size(0) == d_gates.size(0) && sig_m.size(1) == hidden &&
                  m_all.size(0) == d_gates.size(0) + batch && m_all.size(1) == hidden && d_out.dim() == 3 &&
                  d_out.size(0) == batch && d_out.size(1) == steps && d_out.size(2) == hidden &&
                  d_h_last.sizes() == d_c_last.sizes(),
              "step_loops.run_backward: shapes do not fit");
  const Product recurrent{w_hh, w_hh_onednn};
  check_weight(recurrent, hidden, 4 * hidden, "w_hh");
  c10::InferenceMode no_autograd;
  auto d_out_at = [&](int64_t t) { return d_out.select(1, reverse ? steps - 1 - t : t); };  // ∂L/∂out_t (B, H)
  Tensor d_h = (d_out_at(steps - 1) + d_h_last).contiguous();  // ∂L/∂h_T, via the last output and h_T
  Tensor d_c = d_c_last.contiguous().clone();                         // ∂L/∂c_T
  Tensor d_h_next = at::empty_like(d_h);
  Tensor d_h0;
  AT_DISPATCH_FLOATING_TYPES(d_gates.scalar_type(), "run_backward", [&] {
    for (int64_t t = steps - 1; t >= 0; --t) {
      Tensor d_a = d_gates.narrow(0, t * batch, batch);
      gate_gradients(d_a.data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>() + t * batch * 4 * hidden,
                     sig_m.const_data_ptr<scalar_t>() + t * batch * hidden,
                     m_all.const_data_ptr<scalar_t>() + t * batch * hidden, d_h.const_data_ptr<scalar_t>(),
                     d_c.data_ptr<scalar_t>(), batch, hidden);
      if (t == 0) {
        if (need_h0) d_h0 = recurrent.into(at::empty_like(d_h), d_a, std::nullopt);  // ∂L/∂h_0 = ∂L/∂a W_hh of the first step
        break;
      }
      recurrent.add(d_h_next, d_a, d_out_at(t - 1));  // ∂L/∂h_{t-1} = ∂L/∂out_{t-1} + ∂L/∂a_t W_hh
      std::swap(d_h, d_h_next);
    }
  });
  return {need_h0 ? d_h0 : Tensor(), d_c};
}

// Whether oneDNN's inner product is there with the signature these loops call it by.
bool onednn_linear_found() {
  try {
    onednn_linear();
    return true;
  } catch (const c10::Error&) {
    return false;
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("onednn_linear_found", &onednn_linear_found, "whether oneDNN's inner product can be called from here");
  // they touch no Python object: other Python threads run meanwhile, as between torch's own calls
  module.def("run_forward", &run_forward, "the forward loop, every row running every step",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("run_backward", &run_backward, "the backward loop, every row running every step",
             pybind11::call_guard<pybind11::gil_scoped_release>());
}
