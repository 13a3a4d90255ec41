// GPT-2's whole decode step at batch 1 in C++, with q8_0 weights: one call per token, as llama.cpp runs one.
//
// A compiled PyTorch step spends time on a CPU outside its 49 matrix products (notebook 03c measures how much):
// the generated graph's Python wrapper, the guards that check it may run, a dispatcher call per operator, and an
// attention kernel over every preallocated cache position. Here the step is plain loops over raw pointers:
//   x = token embedding + position embedding
//   for each block: LayerNorm, q/k/v product (k and v written into the cache), attention of each head over the
//                   positions written so far (heads split between threads), output projection, residual,
//                   LayerNorm, MLP (product, tanh GELU, product), residual
//   final LayerNorm, output layer, the largest logit (greedy).
// The products are q8_kernel.cpp's (q8_matmul_raw); the rest is small: vectors of 768 to 3,072 values, attention
// over the positions written so far, the largest of the vocabulary's logits.
// helpers/fastgen/cpu_step.py gathers the weights (the decoder's own tensors: nothing is copied) and the KV cache
// buffers, and makes one Q8Step per cache; torch.classes.<namespace>.Q8Step is the class.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#ifndef Q8_NS  // this build's namespace, as in q8_kernel.cpp
#define Q8_NS faster_gpt2
#endif

namespace Q8_NS {

// q8_kernel.cpp: y (M, N) = x (M, K) @ W.T, W interleaved codes (Np, B*32) and scales (Np, B)
void q8_matmul_raw(const float* x, int64_t M, int64_t K, const int8_t* w, const at::Half* s, int64_t Np, int64_t B,
                   int64_t N, float* y);

namespace {

// One q8_0 layer: its codes, scales, output rows and float bias (or none), as Q8Linear stores them.
struct Q8Layer {
  const int8_t* codes;
  const at::Half* scales;
  int64_t padded_rows, blocks, rows;
  const float* bias;

  void apply(const float* x, int64_t K, float* y) const {  // y (rows) = W x + bias
    q8_matmul_raw(x, 1, K, codes, scales, padded_rows, blocks, rows, y);
    if (bias)
      for (int64_t i = 0; i < rows; ++i) y[i] += bias[i];
  }
};

// A sum of products with 16 separate partial sums: the compiler turns them into vector registers (one running
// sum would make each addition wait for the one before it, and stay scalar).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[i + l] * b[i + l];
  float total = 0.f;
  for (; i < n; ++i) total += a[i] * b[i];
  for (int l = 0; l < 16; ++l) total += acc[l];
  return total;
}

void layer_norm(const float* x, const float* gamma, const float* beta, int64_t C, float eps, float* y) {
  float mean = 0.f;
  for (int64_t i = 0; i < C; ++i) mean += x[i];
  mean /= C;
  for (int64_t i = 0; i < C; ++i) y[i] = x[i] - mean;
  const float inv = 1.f / std::sqrt(dot(y, y, C) / C + eps);
  for (int64_t i = 0; i < C; ++i) y[i] = y[i] * inv * gamma[i] + beta[i];
}

// GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x / (1 + exp(-2u)): the
// same function (0.5 (1 + tanh(u)) is the logistic function of 2u); the C library builds tanh from expm1, a
// division and range cases, so one exp does less work.
inline float gelu_tanh(float x) {
  return x / (1.f + std::exp(-1.5957691216f * (x + 0.044715f * x * x * x)));
}

}  // namespace

class Q8Step : public torch::CustomClassHolder {
 public:
  // tensors: wte (V, C), wpe (P, C), ln_f weight and bias, the output layer's codes and scales, then for each of
  // n_layer blocks 18 tensors: ln_1 weight, bias; qkv codes, scales, bias; proj codes, scales, bias; ln_2
  // weight, bias; fc codes, scales, bias; out codes, scales, bias; the cache's keys and values (1, H, L, D).
  Q8Step(std::vector<at::Tensor> tensors, int64_t n_layer, int64_t n_head, int64_t vocab, double eps)
      : keep_(std::move(tensors)), n_layer_(n_layer), n_head_(n_head), vocab_(vocab), eps_((float)eps) {
    TORCH_CHECK((int64_t)keep_.size() == 6 + 18 * n_layer, "Q8Step: expected ", 6 + 18 * n_layer, " tensors, got ",
                keep_.size());
    for (const auto& t : keep_) TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "Q8Step: CPU, contiguous tensors");
    C_ = keep_[0].size(1);
    wte_ = floats(0, "wte");
    wpe_ = floats(1, "wpe");
    positions_ = keep_[1].size(0);
    ln_f_ = {floats(2, "ln_f weight"), floats(3, "ln_f bias")};
    head_ = layer(4, -1, vocab);
    const auto& k0 = keep_[6 + 16];
    TORCH_CHECK(k0.dim() == 4 && k0.size(0) == 1 && k0.size(1) == n_head && k0.size(1) * k0.size(3) == C_,
                "Q8Step: the KV cache must be (1, n_head, length, head_dim) (batch 1)");
    length_ = k0.size(2);
    D_ = k0.size(3);
    for (int64_t l = 0; l < n_layer; ++l) {
      const int64_t i = 6 + 18 * l;
      Block b;
      b.ln_1 = {floats(i, "ln_1 weight"), floats(i + 1, "ln_1 bias")};
      b.qkv = layer(i + 2, i + 4, 3 * C_);
      b.proj = layer(i + 5, i + 7, C_);
      b.ln_2 = {floats(i + 8, "ln_2 weight"), floats(i + 9, "ln_2 bias")};
      b.fc = layer(i + 10, i + 12, keep_[i + 12].size(0));
      b.out = layer(i + 13, i + 15, C_);
      b.k = mutable_floats(i + 16, "cache keys");
      b.v = mutable_floats(i + 17, "cache values");
      TORCH_CHECK(keep_[i + 16].sizes() == k0.sizes() && keep_[i + 17].sizes() == k0.sizes(), "Q8Step: cache shapes");
      blocks_.push_back(b);
    }
    hidden_ = blocks_.empty() ? 4 * C_ : blocks_[0].fc.rows;
    x_.resize(C_);
    h_.resize(C_);
    t_.resize(C_);
    att_.resize(C_);
    qkv_.resize(3 * C_);
    mlp_.resize(hidden_);
    scores_.resize(n_head * length_);
    logits_.resize(vocab);
  }

  // The logits (V,) of token `tok` at position `pos`, whose keys and values are written into the cache.
  at::Tensor logits(int64_t tok, int64_t pos) {
    forward(tok, pos);
    return at::from_blob(logits_.data(), {vocab_}, at::kFloat).clone();
  }

  // The step's 49 products alone, biases included (on whatever its buffers hold): the yardstick for what the
  // rest of a step (LayerNorms, attention, GELU, residuals) adds.
  void products() {
    for (const Block& b : blocks_) {
      b.qkv.apply(h_.data(), C_, qkv_.data());
      b.proj.apply(att_.data(), C_, t_.data());
      b.fc.apply(h_.data(), C_, mlp_.data());
      b.out.apply(mlp_.data(), hidden_, t_.data());
    }
    head_.apply(h_.data(), C_, logits_.data());
  }

  // One greedy step, as helpers.fastgen's ModelStep: reads tok (1, 1) at pos (1,), writes the next token at
  // pos + 1 of out (1, L) and into tok, and advances pos.
  void greedy(at::Tensor tok, at::Tensor pos, at::Tensor out) {
    TORCH_CHECK(tok.scalar_type() == at::kLong && pos.scalar_type() == at::kLong && out.scalar_type() == at::kLong,
                "Q8Step.greedy: tok, pos and out must be int64");
    int64_t* t = tok.data_ptr<int64_t>();
    int64_t* p = pos.data_ptr<int64_t>();
    TORCH_CHECK(p[0] + 1 < out.size(1), "Q8Step.greedy: no room in out for position ", p[0] + 1);
    forward(t[0], p[0]);
    int64_t best = 0;
    for (int64_t i = 1; i < vocab_; ++i)
      if (logits_[i] > logits_[best]) best = i;  // the first of equal largest, as torch.argmax
    p[0] += 1;
    out.data_ptr<int64_t>()[p[0]] = best;
    t[0] = best;
  }

 private:
  struct Norm {
    const float *weight, *bias;
  };
  struct Block {
    Norm ln_1, ln_2;
    Q8Layer qkv, proj, fc, out;
    float *k, *v;
  };

  const float* floats(int64_t i, const char* what) const {
    TORCH_CHECK(keep_[i].scalar_type() == at::kFloat, "Q8Step: ", what, " must be float32");
    return keep_[i].data_ptr<float>();
  }
  float* mutable_floats(int64_t i, const char* what) {
    TORCH_CHECK(keep_[i].scalar_type() == at::kFloat, "Q8Step: ", what, " must be float32");
    return keep_[i].data_ptr<float>();
  }
  Q8Layer layer(int64_t codes, int64_t bias, int64_t rows) const {
    const auto &c = keep_[codes], &s = keep_[codes + 1];
    TORCH_CHECK(c.scalar_type() == at::kChar && s.scalar_type() == at::kHalf, "Q8Step: q8_0 codes int8, scales fp16");
    TORCH_CHECK(c.size(0) >= rows && c.size(0) % 4 == 0 && c.size(1) == s.size(1) * 32, "Q8Step: q8_0 shapes");
    return {c.data_ptr<int8_t>(), s.data_ptr<at::Half>(), c.size(0), s.size(1), rows,
            bias < 0 ? nullptr : floats(bias, "bias")};
  }

  void attention(const Block& b, int64_t pos) {
    const float scale = 1.f / std::sqrt((float)D_);
    at::parallel_for(0, n_head_, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        const float* q = qkv_.data() + h * D_;  // (D,)
        float* keys = b.k + h * length_ * D_;   // (L, D) of this head
        float* values = b.v + h * length_ * D_;
        for (int64_t d = 0; d < D_; ++d) {  // this token's key and value go into the cache
          keys[pos * D_ + d] = qkv_[C_ + h * D_ + d];
          values[pos * D_ + d] = qkv_[2 * C_ + h * D_ + d];
        }
        float* s = scores_.data() + h * length_;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= pos; ++j) {  // only the positions written so far
          s[j] = dot(q, keys + j * D_, D_) * scale;
          top = std::max(top, s[j]);
        }
        float total = 0.f;
        for (int64_t j = 0; j <= pos; ++j) total += (s[j] = std::exp(s[j] - top));
        float* y = att_.data() + h * D_;
        for (int64_t d = 0; d < D_; ++d) y[d] = 0.f;
        for (int64_t j = 0; j <= pos; ++j) {
          const float w = s[j] / total;
          for (int64_t d = 0; d < D_; ++d) y[d] += w * values[j * D_ + d];
        }
      }
    });
  }

  void forward(int64_t tok, int64_t pos) {
    TORCH_CHECK(tok >= 0 && tok < vocab_, "Q8Step: token id ", tok, " outside the vocabulary (", vocab_, ")");
    TORCH_CHECK(pos >= 0 && pos < length_ && pos < positions_, "Q8Step: position ", pos, " outside the cache (",
                length_, ")");
    float* x = x_.data();
    for (int64_t i = 0; i < C_; ++i) x[i] = wte_[tok * C_ + i] + wpe_[pos * C_ + i];
    for (const Block& b : blocks_) {
      layer_norm(x, b.ln_1.weight, b.ln_1.bias, C_, eps_, h_.data());
      b.qkv.apply(h_.data(), C_, qkv_.data());
      attention(b, pos);
      b.proj.apply(att_.data(), C_, t_.data());
      for (int64_t i = 0; i < C_; ++i) x[i] += t_[i];
      layer_norm(x, b.ln_2.weight, b.ln_2.bias, C_, eps_, h_.data());
      b.fc.apply(h_.data(), C_, mlp_.data());
      at::parallel_for(0, hidden_, 256, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) mlp_[i] = gelu_tanh(mlp_[i]);
      });
      b.out.apply(mlp_.data(), hidden_, t_.data());
      for (int64_t i = 0; i < C_; ++i) x[i] += t_[i];
    }
    layer_norm(x, ln_f_.weight, ln_f_.bias, C_, eps_, h_.data());
    head_.apply(h_.data(), C_, logits_.data());
  }

  std::vector<at::Tensor> keep_;  // the tensors whose memory the pointers below read (and the cache's, write)
  int64_t n_layer_, n_head_, vocab_;
  float eps_;
  int64_t C_ = 0, D_ = 0, length_ = 0, positions_ = 0, hidden_ = 0;
  const float *wte_ = nullptr, *wpe_ = nullptr;
  Norm ln_f_{};
  Q8Layer head_{};
  std::vector<Block> blocks_;
  std::vector<float> x_, h_, t_, att_, qkv_, mlp_, scores_, logits_;  // the step's activations, reused
};

}  // namespace Q8_NS

TORCH_LIBRARY_FRAGMENT(Q8_NS, m) {
  using Q8_NS::Q8Step;
  m.class_<Q8Step>("Q8Step")
      .def(torch::init<std::vector<at::Tensor>, int64_t, int64_t, int64_t, double>())
      .def("logits", &Q8Step::logits)
      .def("greedy", &Q8Step::greedy)
      .def("products", &Q8Step::products);
}
