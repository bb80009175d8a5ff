// The two loops of lstm_function.py (_run_forward and _run_backward), step for step the same
// equations (the rounding may differ in the last bit), for a sequence whose every row runs every
// step, on the CPU, in float32 or float64.
//
// At small sizes a step's work is a few thousand numbers, less than the fixed cost of the calls
// that do it from Python: here each step is one ATen product, one or two ATen σ calls (the same
// kernels as from Python) and the rest as plain loops over the rows.
// lstm_function.py's docstring explains the layout: rows step after step, gates (i, f, σ(2a_g), o)
// per row, the cell state kept as m_t = −2c_t, and d_gates holding the local factors on entry.

#include <torch/extension.h>

using at::Tensor;

namespace {

// m_t = −2c_t = f_t ⊙ m_{t-1} − 2 i_t ⊙ (2s_t − 1), for gates (i, f, s, o) of each row, s_t = σ(2a_g)
template <typename T>
void cell_state(const T* gates, const T* m_prev, T* m, int64_t rows, int64_t hidden) {
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
void hidden_state(const T* gates, const T* sig_m, T* h, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* o = gates + r * 4 * hidden + 3 * hidden;
    const T* sm = sig_m + r * hidden;
    T* ht = h + r * hidden;
    for (int64_t k = 0; k < hidden; ++k) {
      ht[k] = o[k] - T(2) * o[k] * sm[k];  // h_t = o_t ⊙ tanh(c_t), tanh(c_t) = 1 − 2σ(−2c_t)
    }
  }
}

// One step back: d_gates' row holds (∂c_t/∂a_i, ∂c_t/∂a_f, ∂c_t/∂a_g, ∂h_t/∂a_o) on entry and ∂L/∂a_t
// on exit; d_c goes from ∂L/∂c_t (the part from step t + 1) to ∂L/∂c_{t-1}.
template <typename T>
void gate_gradients(T* d_gates, const T* dh_dc, const T* gates, const T* d_h, T* d_c, int64_t rows, int64_t hidden) {
  for (int64_t r = 0; r < rows; ++r) {
    T* d_i = d_gates + r * 4 * hidden;
    T* d_f = d_i + hidden;
    T* d_g = d_f + hidden;
    T* d_o = d_g + hidden;
    const T* f = gates + r * 4 * hidden + hidden;
    const T* q = dh_dc + r * hidden;
    const T* u = d_h + r * hidden;
    T* c = d_c + r * hidden;
    for (int64_t k = 0; k < hidden; ++k) {
      d_o[k] *= u[k];                // ∂L/∂a_o = ∂L/∂h_t ⊙ tanh(c_t) ⊙ σ'(a_o)
      T dc = c[k] + u[k] * q[k];     // ∂L/∂c_t += ∂L/∂h_t ⊙ o_t ⊙ (1 − tanh²(c_t))
      d_i[k] *= dc;                  // ∂L/∂a_i = ∂L/∂c_t ⊙ g_t ⊙ σ'(a_i)
      d_f[k] *= dc;                  // ∂L/∂a_f = ∂L/∂c_t ⊙ c_{t-1} ⊙ σ'(a_f)
      d_g[k] *= dc;                  // ∂L/∂a_g = ∂L/∂c_t ⊙ i_t ⊙ tanh'(a_g)
      c[k] = dc * f[k];              // ∂L/∂c_{t-1} = ∂L/∂c_t ⊙ f_t
    }
  }
}

void check(const std::vector<Tensor>& tensors) {
  for (const Tensor& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "step_loops: expected CPU tensors");
    TORCH_CHECK(t.scalar_type() == tensors[0].scalar_type(), "step_loops: expected tensors of one dtype");
  }
}

}  // namespace

// gates (R, 4H) holds W_ih x_t + b of every row on entry (the g rows doubled: 2a_g) and
// (i_t, f_t, σ(2a_g), o_t) on exit; h, m, sig_m (R, H) get h_t, −2c_t and σ(−2c_t);
// w_hh_t (H, 4H) is W_hhᵀ with its g columns doubled. R is steps × B, B the rows of h0.
void run_forward(Tensor gates, Tensor h, Tensor m, Tensor sig_m, Tensor h0, Tensor m0, Tensor w_hh_t) {
  check({gates, h, m, sig_m, h0, m0});
  TORCH_CHECK(gates.is_contiguous() && h.is_contiguous() && m.is_contiguous() && sig_m.is_contiguous() &&
                  h0.is_contiguous() && m0.is_contiguous(),
              "step_loops: expected contiguous buffers");
  const int64_t batch = h0.size(0), hidden = h0.size(1), steps = batch > 0 ? gates.size(0) / batch : 0;
  TORCH_CHECK(batch > 0 && steps > 0 && gates.size(0) == steps * batch && gates.size(1) == 4 * hidden && h.sizes() == m.sizes() &&
                  h.sizes() == sig_m.sizes() && h.size(0) == gates.size(0) && h.size(1) == hidden &&
                  m0.sizes() == h0.sizes() && w_hh_t.size(0) == hidden && w_hh_t.size(1) == 4 * hidden,
              "step_loops.run_forward: shapes do not fit");
  c10::InferenceMode no_autograd;
  Tensor h_prev = h0, m_prev = m0;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "run_forward", [&] {
    for (int64_t t = 0; t < steps; ++t) {
      Tensor a = gates.narrow(0, t * batch, batch);
      Tensor m_t = m.narrow(0, t * batch, batch), sig_m_t = sig_m.narrow(0, t * batch, batch);
      Tensor h_t = h.narrow(0, t * batch, batch);
      a.addmm_(h_prev, w_hh_t);  // a_t = W_ih x_t + b + W_hh h_{t-1}
      a.sigmoid_();              // i_t, f_t, o_t = σ(a_i), σ(a_f), σ(a_o); s_t = σ(2a_g), g_t = 2s_t − 1
      cell_state(a.const_data_ptr<scalar_t>(), m_prev.const_data_ptr<scalar_t>(), m_t.data_ptr<scalar_t>(), batch, hidden);
      at::sigmoid_out(sig_m_t, m_t);  // σ(−2c_t), and tanh(c_t) = 1 − 2σ(−2c_t)
      hidden_state(a.const_data_ptr<scalar_t>(), sig_m_t.const_data_ptr<scalar_t>(), h_t.data_ptr<scalar_t>(), batch, hidden);
      h_prev = h_t;
      m_prev = m_t;
    }
  });
}

// d_gates (R, 4H) holds the local factors on entry and ∂L/∂a of every row on exit; dh_dc (R, H)
// is ∂h_t/∂c_t; gates (R, 4H) the forward gates (f_t read from them); d_out (B, T, H) ∂L/∂out_t,
// batch-first, step t at position T − 1 − t if reverse; d_h_last, d_c_last (B, H) ∂L/∂h_T,
// ∂L/∂c_T; w_hh (4H, H). Returns (∂L/∂h_0, or an empty tensor unless need_h0; ∂L/∂c_0).
std::vector<Tensor> run_backward(Tensor d_gates, Tensor dh_dc, Tensor gates, Tensor d_out, Tensor d_h_last,
                                 Tensor d_c_last, Tensor w_hh, bool reverse, bool need_h0) {
  check({d_gates, dh_dc, gates, d_out, d_h_last, d_c_last, w_hh});
  TORCH_CHECK(d_gates.is_contiguous() && dh_dc.is_contiguous() && gates.is_contiguous(),
              "step_loops: expected contiguous buffers");
  const int64_t batch = d_c_last.size(0), hidden = d_c_last.size(1), steps = batch > 0 ? d_gates.size(0) / batch : 0;
  TORCH_CHECK(batch > 0 && steps > 0 && d_gates.size(0) == steps * batch && d_gates.sizes() == gates.sizes() &&
                  d_gates.size(1) == 4 * hidden && dh_dc.size(0) == d_gates.size(0) && dh_dc.size(1) == hidden &&
                  d_out.dim() == 3 && d_out.size(0) == batch && d_out.size(1) == steps && d_out.size(2) == hidden &&
                  d_h_last.sizes() == d_c_last.sizes() && w_hh.size(0) == 4 * hidden && w_hh.size(1) == hidden,
              "step_loops.run_backward: shapes do not fit");
  c10::InferenceMode no_autograd;
  auto d_out_at = [&](int64_t t) { return d_out.select(1, reverse ? steps - 1 - t : t); };  // ∂L/∂out_t (B, H)
  Tensor d_h = (d_out_at(steps - 1) + d_h_last).contiguous();  // ∂L/∂h_T, via the last output and h_T
  Tensor d_c = d_c_last.contiguous().clone();                         // ∂L/∂c_T
  Tensor d_h_next = at::empty_like(d_h);
  Tensor d_h0;
  AT_DISPATCH_FLOATING_TYPES(d_gates.scalar_type(), "run_backward", [&] {
    for (int64_t t = steps - 1; t >= 0; --t) {
      Tensor d_a = d_gates.narrow(0, t * batch, batch);
      gate_gradients(d_a.data_ptr<scalar_t>(), dh_dc.const_data_ptr<scalar_t>() + t * batch * hidden,
                     gates.const_data_ptr<scalar_t>() + t * batch * 4 * hidden, d_h.const_data_ptr<scalar_t>(),
                     d_c.data_ptr<scalar_t>(), batch, hidden);
      if (t == 0) {
        if (need_h0) d_h0 = at::mm(d_a, w_hh);  // ∂L/∂h_0 = ∂L/∂a W_hh of the first step
        break;
      }
      at::addmm_out(d_h_next, d_out_at(t - 1), d_a, w_hh);  // ∂L/∂h_{t-1} = ∂L/∂out_{t-1} + ∂L/∂a_t W_hh
      std::swap(d_h, d_h_next);
    }
  });
  return {need_h0 ? d_h0 : Tensor(), d_c};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  // they touch no Python object: other Python threads run meanwhile, as between torch's own calls
  module.def("run_forward", &run_forward, "the forward loop, every row running every step",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("run_backward", &run_backward, "the backward loop, every row running every step",
             pybind11::call_guard<pybind11::gil_scoped_release>());
}
