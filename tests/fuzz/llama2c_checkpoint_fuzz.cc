// llama2c_checkpoint_fuzz.cc — fuzzes llama2.c checkpoint loading
// (client/model/llama.h LlamaModel::LoadLlama2c), legacy and version-1 layouts.
//
// LoadLlama2c reads a path, so each input is written to a file in a per-process scratch
// directory first. Declared sizes must be checked against the file before anything is allocated
// from them: scripts/fuzz.sh caps inputs at 64 KiB and the process at libFuzzer's default
// -rss_limit_mb / -malloc_limit_mb of 2 GiB, so a small file whose header makes the loader
// allocate gigabytes is reported as a finding.
//
// Checks: no crash, no sanitizer report, no exception escaping (LibTorch's c10::Error is caught
// in llama.cc); a model that loads describes itself consistently.
#include <cstddef>
#include <cstdint>
#include <span>

#include "client/model/llama.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  const std::filesystem::path path = fuzz::ScratchDir::Get() / "model.bin";
  fuzz::WriteScratchFile(path, bytes);
  Result<std::shared_ptr<const client::LlamaModel>> model =
      client::LlamaModel::LoadLlama2c(path.string());
  fuzz::Report("LoadLlama2c", model);
  if (!model.ok()) {
    fuzz::Require(model.status().message().find(path.string()) != std::string::npos,
                  "every error names the checkpoint file");
    return 0;
  }
  const client::LlamaConfig& c = model.value()->config();
  fuzz::Require(client::ValidateLlamaConfig(c, "loaded").ok(), "a loaded model's config is valid");
  return 0;
}
