// hf_tokenizer.h — Hugging Face `tokenizer.json` BPE tokenizers, torch-free.
//
// Encodes and decodes like the Rust `tokenizers` library (which transformers' fast tokenizers
// run), for the two BPE families Llama-family checkpoints ship:
//   - byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): ByteLevel pre-tokenizer (its GPT-2 regex,
//     add_prefix_space), or Split(Regex) + ByteLevel(use_regex=false) as in Llama 3 and Qwen2;
//     decoder ByteLevel;
//   - SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama): normalizer
//     Sequence[Prepend("▁"), Replace(" ", "▁")] or the legacy Metaspace pre-tokenizer; decoder
//     Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)].
// The pipeline is the library's: split the text on added tokens (those with normalized=false on
// the raw text, the others after normalizing), normalize, pre-tokenize, BPE each word by merge rank
// (priority queue, O(n log n) per word, words cached per call), then the post-processor's special
// tokens. Regexes run on PCRE2 (UTF + UCP), normalization forms on utf8proc.
//
// Supported components (anything else is refused at load time, never approximated):
//   model          BPE (vocab, merges as "a b" or [a, b], unk_token, fuse_unk, byte_fallback,
//                  ignore_merges, continuing_subword_prefix, end_of_word_suffix; dropout null/0)
//   normalizer     NFC, NFD, NFKC, NFKD, Prepend, Replace (String or Regex), Strip, ByteLevel,
//                  Sequence
//   pre_tokenizer  ByteLevel, Split (String or Regex, every behavior, invert), Metaspace
//                  (prepend_scheme first/always/never or add_prefix_space; split), Digits, Sequence
//   post_processor TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence
//   decoder        ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence
// `truncation` and `padding` are ignored, as transformers ignores them unless a call asks for them.
//
// Knows nothing about models or tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

// Immutable after loading: every const method is safe to call from any number of threads at once
// (Encode keeps its caches per call).
class HfTokenizer final : public TextTokenizer {
 public:
  // Reads `path` (a tokenizer.json) and, when it exists, the tokenizer_config.json beside it.
  // kNotFound: `path` cannot be opened. kInvalidArgument: malformed JSON, a missing or mistyped
  // key, a merge naming a token the vocabulary lacks, duplicate ids or contents, a regex PCRE2
  // rejects, a type name the Hugging Face library does not define. kUnimplemented: a component the
  // library defines that this class does not (WordPiece, Unigram, Lowercase, Whitespace, ...).
  // Every message names the file and the JSON key ("model.merges[12]").
  static Result<std::unique_ptr<HfTokenizer>> Load(const std::string& path);

  // Same as Load, from text already in memory. `source` names `json` in error messages;
  // `config_json` is the content of a tokenizer_config.json ("" = none), named `config_source`.
  static Result<std::unique_ptr<HfTokenizer>> Parse(std::string_view json, std::string_view source,
                                                    std::string_view config_json = {},
                                                    std::string_view config_source = {});

  ~HfTokenizer() override;
  HfTokenizer(const HfTokenizer&) = delete;
  HfTokenizer& operator=(const HfTokenizer&) = delete;

  // The ids the Rust library's encode(text, add_special_tokens=false) gives, with the prefix of
  // the post-processor's template (or bos_id()) first when `bos`, and its suffix (or eos_id()) last
  // when `eos`. So Encode(t, true, false) == encode(t, add_special_tokens=true) for templates that
  // add only a BOS (Llama 2 and 3) or nothing (GPT-2, Qwen2). Text that is not valid UTF-8 is
  // first made valid the way Rust's String::from_utf8_lossy does (each invalid sequence -> U+FFFD).
  std::vector<TokenId> Encode(std::string_view text, bool bos, bool eos) const override;

  // decode(tokens, skip_special_tokens=true): added tokens marked special are left out, the others
  // go through the decoder like vocabulary pieces. Ids outside the vocabulary are skipped.
  std::string Decode(std::span<const TokenId> tokens) const override;

  // One past the largest id of the vocabulary and the added tokens.
  std::int32_t vocab_size() const override;
  // BOS: the single token the post-processor puts before the text (TemplateProcessing's "single"
  // template, RobertaProcessing's cls); without a post-processor that adds one, tokenizer_config's
  // bos_token when it also says add_bos_token: true; else -1. EOS: the token the template puts
  // after the text; else tokenizer_config's eos_token; else the first special added token among
  // "</s>", "<|end_of_text|>", "<|endoftext|>"; else -1.
  TokenId bos_id() const override;
  TokenId eos_id() const override;
  // The id of a vocabulary piece (in its stored form, e.g. "Ġthe" or "▁the") or an added token.
  TokenId PieceToId(std::string_view piece) const override;
  // The stored form of `id` ("" for an id the tokenizer does not define).
  std::string_view IdToPiece(TokenId id) const;
  // True for added tokens marked special (left out by Decode).
  bool IsSpecial(TokenId id) const;
  std::string Describe() const override;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<const Impl> impl);
  std::unique_ptr<const Impl> impl_;
};

}  // namespace fedlora::client
