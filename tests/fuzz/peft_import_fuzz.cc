// peft_import_fuzz.cc — fuzzes reading a Hugging Face PEFT LoRA adapter directory
// (common/lora/peft.h ImportPeft) and turning it into our adapter (AdapterFromPeft).
//
// ImportPeft reads files, so the input is cut (fuzz_input.h layout) into up to three parts that
// are written into a per-process scratch directory: adapter_config.json, then
// adapter_model.safetensors, then adapter_model.bin. A part that is absent or empty is a file
// that is absent, so "config only" and "pickle only" directories are covered too (an empty file
// reads like any truncated one).
//
// Checks: no crash, no sanitizer report; an imported adapter keeps ImportPeft's invariants
// (every module's A has RankOf rows, B RankOf columns, A and B agree on the module's shape)
// and AdapterFromPeft accepts it.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "common/lora/peft.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  namespace fs = std::filesystem;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const std::vector<std::span<const std::byte>> parts = fuzz::SplitParts(input, 3);

  const fs::path dir = fuzz::ScratchDir::Get() / "adapter";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  const std::string_view names[] = {lora::kPeftConfigFile, lora::kPeftWeightsFile,
                                    lora::kPeftPickleFile};
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].empty()) fuzz::WriteScratchFile(dir / names[i], parts[i]);
  }

  Result<lora::PeftAdapter> adapter = lora::ImportPeft(dir.string());
  fuzz::Report("ImportPeft", adapter);
  if (!adapter.ok()) return 0;
  for (const auto& [module, f] : adapter->modules) {
    const std::uint32_t r = adapter->RankOf(module);
    fuzz::Require(f.a.shape.size() == 2 && f.b.shape.size() == 2, "factors are matrices");
    fuzz::Require(f.a.shape[0] == r && f.b.shape[1] == r, "factors have the module's rank");
    fuzz::Require(Validate(f.a).ok() && Validate(f.b).ok(), "factors are valid tensors");
  }
  Result<lora::LoraAdapterValue> value = lora::AdapterFromPeft(adapter.value());
  fuzz::Require(value.ok(), "an imported adapter converts to ours");
  (void)lora::PeftConfigJson(adapter.value());
  return 0;
}
