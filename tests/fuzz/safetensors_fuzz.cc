// safetensors_fuzz.cc — fuzzes the safetensors reader and the Hugging Face JSON side-file
// readers (common/safetensors.h): Parse, ParseView, ParseShardIndex, ParseJsonLeaves.
//
// Input: the raw bytes, given to all four (a safetensors file for the first two, JSON text for
// the others; each rejects the other kind at once, so one corpus serves all).
//
// Checks: no crash, no sanitizer report; Parse and ParseView accept and reject exactly the same
// bytes with the same code and message, and agree on every tensor (the header promises this);
// every accepted tensor is Validate-clean; a parsed file re-serialises and parses back equal.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "common/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);

  Result<safetensors::File> file = safetensors::Parse(bytes, "fuzz.safetensors");
  Result<safetensors::FileView> view = safetensors::ParseView(bytes, "fuzz.safetensors");
  fuzz::Report("Parse", file);
  fuzz::Require(file.ok() == view.ok(), "Parse and ParseView accept the same bytes");
  if (!file.ok()) {
    fuzz::Require(file.status().code() == view.status().code() &&
                      file.status().message() == view.status().message(),
                  "Parse and ParseView fail the same way");
  } else {
    fuzz::Require(file->metadata == view->metadata, "same metadata");
    fuzz::Require(file->tensors.size() == view->tensors.size(), "same tensor count");
    for (const auto& [name, t] : file->tensors) {
      fuzz::Require(Validate(t, name).ok(), "parsed tensors are valid");
      const auto it = view->tensors.find(name);
      fuzz::Require(it != view->tensors.end(), "same tensor names");
      const safetensors::TensorView& v = it->second;
      fuzz::Require(v.dtype == t.dtype && v.shape == t.shape &&
                        std::equal(v.data.begin(), v.data.end(), t.data.begin(), t.data.end()),
                    "same tensor contents");
    }
    const std::vector<std::byte> again = safetensors::Serialize(file->tensors, file->metadata);
    Result<safetensors::File> reparsed = safetensors::Parse(again, "reserialised");
    fuzz::Require(reparsed.ok(), "a parsed file re-serialises to a valid file");
    fuzz::Require(reparsed->tensors == file->tensors && reparsed->metadata == file->metadata,
                  "Serialize(Parse(x)) parses back equal");
  }

  const std::string_view text = fuzz::AsText(bytes);
  Result<safetensors::ShardIndex> index =
      safetensors::ParseShardIndex(text, "model.safetensors.index.json");
  fuzz::Report("ParseShardIndex", index);
  if (index.ok()) {
    for (const auto& [tensor, shard] : index.value()) {
      fuzz::Require(!shard.empty() && shard != "." && shard != ".." &&
                        shard.find_first_of("/\\") == std::string::npos,
                    "shard names cannot leave the index's directory");
    }
  }
  fuzz::Report("ParseJsonLeaves", safetensors::ParseJsonLeaves(text, "config.json"));
  return 0;
}
