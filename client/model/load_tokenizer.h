// load_tokenizer.h — opens whichever tokenizer a checkpoint ships, by file name.
//
// Picks the implementation from `path`: a `.json` file is a Hugging Face tokenizer.json
// (HfTokenizer), a `.model` file a SentencePiece model (SentencePieceTokenizer), a `.bin` file a
// llama2.c tokenizer (Tokenizer); a directory means its tokenizer.json, else its tokenizer.model.
// Torch-free; knows nothing about models beyond the vocabulary size it is given.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "client/model/text_tokenizer.h"
#include "common/status.h"

namespace fedlora::client {

// Loads the tokenizer at `path` for a model whose embedding has `model_vocab_size` rows, and checks
// that every id the tokenizer can produce is a row (a model may pad its vocabulary beyond the
// tokenizer's; the reverse means the wrong tokenizer). `model_vocab_size` <= 0 skips the check,
// except for `.bin` files, whose piece count is the model's vocabulary size and is required.
// kNotFound: no such file, or a directory without tokenizer.json / tokenizer.model.
// kInvalidArgument: an unknown extension, a malformed file, or a tokenizer larger than the model
// (the message names both sizes and `path`). kUnimplemented: a tokenizer.json using a component
// HfTokenizer does not support. Every message names the file.
Result<std::unique_ptr<TextTokenizer>> LoadTokenizer(const std::string& path,
                                                     std::int32_t model_vocab_size);

}  // namespace fedlora::client
