// text_tokenizer.h — what the data pipeline, trainer and generator need from a tokenizer.
//
// Implementations: the llama2.c `.bin` tokenizer (tokenizer.h), Hugging Face `tokenizer.json`
// (hf_tokenizer.h: byte-level BPE as in GPT-2/Llama 3/Qwen2/SmolLM, SentencePiece-style BPE with
// byte fallback as in Llama 2/TinyLlama) and SentencePiece `.model` files (sp_tokenizer.h).
// LoadTokenizer (load_tokenizer.h) picks one by file. Torch-free.
//
// Every implementation is immutable after loading: its const methods are safe from any number of
// threads at once.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fedlora::client {

using TokenId = std::int32_t;

class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;

  // Token ids of `text`, with the BOS id first when `bos` and the tokenizer has one, and the EOS
  // id last when `eos` and it has one. Special tokens written in the text (Hugging Face "added
  // tokens" such as "<|im_start|>") become their ids, as transformers' tokenizers do by default.
  // Never fails: bytes the vocabulary cannot spell go through byte fallback or the unknown token.
  virtual std::vector<TokenId> Encode(std::string_view text, bool bos, bool eos) const = 0;

  // The text of `tokens`, leaving out special/control tokens (BOS, EOS, padding, chat markers).
  // Ids outside the vocabulary are skipped. Byte-level pieces that together form one UTF-8
  // character are joined before decoding; incomplete sequences become U+FFFD.
  virtual std::string Decode(std::span<const TokenId> tokens) const = 0;

  // Number of ids this tokenizer can produce (the model's vocabulary may be padded beyond it).
  virtual std::int32_t vocab_size() const = 0;
  // Beginning/end of sequence ids, or -1 when the tokenizer has none.
  virtual TokenId bos_id() const = 0;
  virtual TokenId eos_id() const = 0;
  // The id of the token whose string form is exactly `piece` (as in tokenizer.json's vocabulary
  // or added tokens, or the llama2.c piece), or -1.
  virtual TokenId PieceToId(std::string_view piece) const = 0;
  // A short description for logs: "llama2.c bin (512 pieces)", "hf byte-level BPE (151643 + 22
  // added)", ...
  virtual std::string Describe() const = 0;
};

}  // namespace fedlora::client
