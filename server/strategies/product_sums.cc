#include "server/strategies/product_sums.h"

#include <ATen/ATen.h>

#include "common/lora/adapter_layout.h"
#include "common/lora/tensor_bridge.h"
#include "server/strategies/strategy_util.h"

namespace fedlora::server {

ProductSums::ProductSums(std::map<std::string, Dims, std::less<>> modules, bool factor_means)
    : factor_means_(factor_means) {
  for (auto& [name, dims] : modules) modules_[name].dims = dims;
}

std::map<std::string, ProductSums::Dims, std::less<>> ProductSums::DimsOf(
    const TensorMap& adapter) {
  std::map<std::string, Dims, std::less<>> dims;
  for (const std::string& module : AdapterModules(adapter)) {
    dims[module] = {adapter.at(lora::LoraBName(module)).shape.at(0),
                    adapter.at(lora::LoraAName(module)).shape.at(1)};
  }
  return dims;
}

Status ProductSums::BlockFactors(std::string_view module, std::vector<at::Tensor>* as,
                                 std::vector<at::Tensor>* bs) const {
  for (const auto& [id, block] : blocks(module)) {  // Client-id order.
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, lora::FromWireAs(block.A, at::kDouble));
    FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, lora::FromWireAs(block.B, at::kDouble));
    as->push_back(std::move(a));
    bs->push_back(std::move(b));
  }
  return OkStatus();
}

Status ProductSums::Fold(const std::string& client, const TensorMap& tensors, double weight) {
  std::vector<WeightedSums::Term> terms;
  if (factor_means_) {
    for (const auto& [name, t] : tensors) terms.push_back({name, &t, weight});
    FEDLORA_RETURN_IF_ERROR(factors_.Fold(terms, client));
  }
  if (Status s = FoldProducts(client, tensors, weight); !s.ok()) {
    if (factor_means_) (void)factors_.Unfold(terms, client);
    return s;
  }
  weights_[client] = weight;
  return OkStatus();
}

bool ProductSums::dense(std::string_view module) const {
  const auto it = modules_.find(module);
  return it != modules_.end() && it->second.dense.has_value();
}

const std::map<std::string, ProductSums::Block, std::less<>>& ProductSums::blocks(
    std::string_view module) const {
  static const std::map<std::string, Block, std::less<>> kNone;
  const auto it = modules_.find(module);
  return it == modules_.end() ? kNone : it->second.blocks;
}

std::size_t ProductSums::dense_modules() const {
  std::size_t n = 0;
  for (const auto& [name, m] : modules_) n += m.dense.has_value() ? 1 : 0;
  return n;
}

Status ProductSums::AddDense(Module& m, const Block& block, std::string_view what) const try {
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor b, lora::FromWireAs(block.B, at::kDouble));
  FEDLORA_ASSIGN_OR_RETURN(at::Tensor a, lora::FromWireAs(block.A, at::kDouble));
  FEDLORA_ASSIGN_OR_RETURN(Tensor product, Store(at::matmul(b, a), DType::kF64));
  return m.dense->Add(product, block.weight, what);
} catch (const c10::Error& e) {
  return Internal("product of ", what, ": ", e.what_without_backtrace());
}

Status ProductSums::FoldProducts(const std::string& client, const TensorMap& tensors,
                                 double weight) {
  // Validate everything first, so a bad tensor leaves no trace.
  std::vector<std::pair<Module*, Block>> adds;
  for (auto& [name, m] : modules_) {
    const auto a = tensors.find(lora::LoraAName(name));
    const auto b = tensors.find(lora::LoraBName(name));
    if (a == tensors.end() && b == tensors.end()) continue;
    if (a == tensors.end() || b == tensors.end() || a->second.shape.size() != 2 ||
        b->second.shape.size() != 2 || a->second.shape[1] != m.dims.d_in ||
        b->second.shape[0] != m.dims.d_out || a->second.shape[0] != b->second.shape[1]) {
      return InvalidArgument("client ", client, ": the LoRA factors of '", name,
                             "' are missing or do not chain to ", m.dims.d_out, " x ", m.dims.d_in);
    }
    if (m.blocks.contains(client)) {
      return InvalidArgument("client ", client, " was already folded into '", name, "'");
    }
    adds.push_back({&m, Block{b->second, a->second, weight}});
  }
  std::vector<std::pair<Module*, std::string>> added_blocks;
  std::vector<std::pair<Module*, const Block*>> added_dense;
  Status status;
  for (auto& [m, block] : adds) {
    const std::string what = StrCat("client ", client, "'s product");
    if (!m->dense) {
      const std::int64_t rank = block.A.shape[0];
      const std::int64_t stacked_bytes =
          (m->stacked_rank + rank) * (m->dims.d_out + m->dims.d_in) * 4;
      const std::int64_t dense_bytes = m->dims.d_out * m->dims.d_in * 16;
      if (stacked_bytes <= dense_bytes) {
        m->stacked_rank += rank;
        added_blocks.push_back({m, client});
        m->blocks.emplace(client, std::move(block));
        continue;
      }
      // The blocks outgrew the dense sum: switch this module for good.
      m->dense.emplace(std::vector<std::int64_t>{m->dims.d_out, m->dims.d_in});
      for (const auto& [id, b] : m->blocks) {
        status = AddDense(*m, b, StrCat("client ", id, "'s product"));
        if (!status.ok()) return status.WithContext("switching to a dense sum");
      }
      m->blocks.clear();
    }
    status = AddDense(*m, block, what);
    if (!status.ok()) break;
    added_dense.push_back({m, &block});
  }
  if (!status.ok()) {  // Undo exactly what this upload added.
    for (auto& [m, id] : added_blocks) {
      if (m->blocks.contains(id)) {
        m->stacked_rank -= m->blocks.at(id).A.shape[0];
        m->blocks.erase(id);
      }
    }
    for (auto& [m, block] : added_dense) {
      Block undo = *block;
      undo.weight = -undo.weight;
      (void)AddDense(*m, undo, "undo");
    }
    return status;
  }
  return OkStatus();
}

at::Tensor ProductSums::Dense(std::string_view module, double scale) const {
  const Module& m = modules_.find(module)->second;
  const std::vector<double> v = m.dense->Scaled(scale);
  return at::from_blob(const_cast<double*>(v.data()), {m.dims.d_out, m.dims.d_in},
                       at::TensorOptions().dtype(at::kDouble))
      .clone();
}

}  // namespace fedlora::server
