// sp_tokenizer.h — SentencePiece `.model` files through libsentencepiece, torch-free.
//
// The model's own normalizer, dummy prefix and segmentation (BPE or Unigram) come from the library,
// so ids match Python's sentencepiece.SentencePieceProcessor.encode for the same file. The one
// addition is the rule text_tokenizer.h promises: control and unknown pieces written in the text
// ("<s>", "</s>", "<unk>") become their ids, as transformers' slow (legacy) Llama tokenizer does;
// the text between them is encoded by SentencePiece chunk by chunk.
//
// libsentencepiece is never linked into our binaries: Debian's build carries and exports its own
// protobuf, which clashes with LibTorch's. It lives in the module libfedlora_spm_shim.so
// (sp_shim.cc), which the first Load/Parse opens privately (dlopen RTLD_LOCAL | RTLD_DEEPBIND) from,
// in order: $FEDLORA_SPM_SHIM if set; the build tree's copy; libfedlora_spm_shim.so next to the
// running executable. Knows nothing about models or tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

// Immutable after loading: every const method is safe to call from any number of threads at once.
class SentencePieceTokenizer final : public TextTokenizer {
 public:
  // Reads a serialized SentencePiece ModelProto. kNotFound: `path` cannot be opened.
  // kInvalidArgument: the bytes are not a SentencePiece model. kFailedPrecondition: the shim
  // (libfedlora_spm_shim.so) cannot be loaded, naming every path tried and dlerror()'s reason, or
  // libsentencepiece threw. Every message names `path`.
  static Result<std::unique_ptr<SentencePieceTokenizer>> Load(const std::string& path);
  // Same as Load, from bytes already in memory; `source` names them in error messages.
  static Result<std::unique_ptr<SentencePieceTokenizer>> Parse(std::string_view bytes,
                                                               std::string_view source);

  ~SentencePieceTokenizer() override;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  // Optional bos_id(); the text split on control/unknown pieces (longest match at the leftmost
  // position), each piece's id for those and SentencePiece's ids for each chunk between them
  // (every chunk gets the model's dummy prefix, as transformers' legacy behaviour does); optional
  // eos_id(). Without such pieces in the text this is exactly SentencePiece's Encode.
  std::vector<TokenId> Encode(std::string_view text, bool bos, bool eos) const override;
  // SentencePiece's Decode (control pieces produce no text); ids outside the vocabulary skipped.
  std::string Decode(std::span<const TokenId> tokens) const override;

  std::int32_t vocab_size() const override;
  TokenId bos_id() const override;  // -1 when the model disables it.
  TokenId eos_id() const override;
  TokenId PieceToId(std::string_view piece) const override;
  std::string Describe() const override;

 private:
  struct Special {
    std::string piece;
    TokenId id;
  };
  class Processor;  // Owns one handle of the shim; defined in sp_tokenizer.cc.

  SentencePieceTokenizer(std::unique_ptr<Processor> processor, std::string source);
  void EncodeChunk(std::string_view chunk, std::vector<TokenId>* out) const;

  std::unique_ptr<const Processor> processor_;
  std::string source_;
  std::vector<Special> specials_;  // Control and unknown pieces, longest first.
};

}  // namespace fedlora::client
