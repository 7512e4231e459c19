#include "client/model/load_tokenizer.h"

#include <filesystem>
#include <system_error>

#include "client/model/hf_tokenizer.h"
#include "client/model/sp_tokenizer.h"
#include "client/model/tokenizer.h"

namespace fedlora::client {
namespace {

namespace fs = std::filesystem;

Result<std::unique_ptr<TextTokenizer>> LoadByExtension(const fs::path& file,
                                                       std::int32_t model_vocab_size) {
  const std::string path = file.string();
  const std::string ext = file.extension().string();
  if (ext == ".json") {
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<HfTokenizer> t, HfTokenizer::Load(path));
    return std::unique_ptr<TextTokenizer>(std::move(t));
  }
  if (ext == ".model") {
    FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceTokenizer> t,
                             SentencePieceTokenizer::Load(path));
    return std::unique_ptr<TextTokenizer>(std::move(t));
  }
  if (ext == ".bin") {
    if (model_vocab_size <= 0) {
      return InvalidArgument("tokenizer '", path,
                             "': a llama2.c .bin tokenizer needs the model's "
                             "vocabulary size (got ",
                             model_vocab_size, ")");
    }
    FEDLORA_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::Load(path, model_vocab_size));
    return std::unique_ptr<TextTokenizer>(std::make_unique<Tokenizer>(std::move(t)));
  }
  return InvalidArgument("tokenizer '", path, "': unknown kind of file '", ext,
                         "' (expected tokenizer.json, a SentencePiece .model, a llama2.c .bin, "
                         "or a directory holding tokenizer.json or tokenizer.model)");
}

}  // namespace

Result<std::unique_ptr<TextTokenizer>> LoadTokenizer(const std::string& path,
                                                     std::int32_t model_vocab_size) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) {
    if (fs::exists(file / "tokenizer.json", ec)) {
      file /= "tokenizer.json";
    } else if (fs::exists(file / "tokenizer.model", ec)) {
      file /= "tokenizer.model";
    } else {
      return NotFound("tokenizer directory '", path,
                      "' holds neither tokenizer.json nor tokenizer.model");
    }
  } else if (!fs::exists(file, ec)) {
    return NotFound("tokenizer file '", path, "' does not exist");
  }
  FEDLORA_ASSIGN_OR_RETURN(std::unique_ptr<TextTokenizer> tokenizer,
                           LoadByExtension(file, model_vocab_size));
  if (model_vocab_size > 0 && tokenizer->vocab_size() > model_vocab_size) {
    return InvalidArgument("tokenizer '", file.string(), "' (", tokenizer->Describe(),
                           ") produces ids up to ", tokenizer->vocab_size() - 1,
                           " but the model's vocabulary has only ", model_vocab_size,
                           " rows (hint: is it this model's tokenizer?)");
  }
  return tokenizer;
}

}  // namespace fedlora::client
