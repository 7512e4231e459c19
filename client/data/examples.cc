#include "client/data/examples.h"

#include "client/data/corpus_cache.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "client/data/text_dataset.h"

namespace fedlora::client {
namespace {

// Sub-seed of the max_records sample, distinct from the partition's and the held-out split's.
constexpr std::uint64_t kMaxRecordsStream = 0x6D61785F72656373ull;  // "max_recs"

std::vector<std::size_t> LabelHistogram(std::span<const Record> records,
                                        std::span<const std::size_t> indices,
                                        std::size_t num_classes) {
  std::vector<std::size_t> histogram(num_classes, 0);
  for (std::size_t i : indices) {
    const std::int32_t label = records[i].label;
    if (label >= 0 && static_cast<std::size_t>(label) < num_classes) ++histogram[label];
  }
  return histogram;
}

Status ValidateRecordConfig(const DataConfig& config) {
  if (config.num_partitions == 0) return InvalidArgument("data.num_partitions must be >= 1");
  if (config.partition_index >= config.num_partitions) {
    return InvalidArgument("data.partition_index ", config.partition_index,
                           " is out of range for data.num_partitions ", config.num_partitions);
  }
  if (!(config.heldout_fraction >= 0.0 && config.heldout_fraction < 1.0)) {
    return InvalidArgument("data.heldout_fraction ", config.heldout_fraction, " must be in [0, 1)");
  }
  if (config.path.empty()) return InvalidArgument("data.path is required");
  return OkStatus();
}

std::string Histogram(const std::vector<std::size_t>& h) {
  if (h.empty()) return "";
  std::string out = " [";
  for (std::size_t c = 0; c < h.size(); ++c) out += StrCat(c == 0 ? "" : " ", h[c]);
  return out + "]";
}

}  // namespace

std::vector<TokenId> EncodeContinuation(const TextTokenizer& tokenizer, std::string_view text) {
  if (text.empty()) return {};
  const std::vector<TokenId> probe = tokenizer.Encode("\n", false, false);
  std::vector<TokenId> joined = tokenizer.Encode(StrCat("\n", text), false, false);
  if (joined.size() > probe.size() && std::equal(probe.begin(), probe.end(), joined.begin())) {
    joined.erase(joined.begin(), joined.begin() + static_cast<std::ptrdiff_t>(probe.size()));
    return joined;
  }
  return tokenizer.Encode(text, false, false);
}

std::optional<Example> EncodeTurn(const RenderedTurn& turn, const TextTokenizer& tokenizer,
                                  std::size_t max_tokens) {
  const bool has_bos = tokenizer.bos_id() >= 0;
  const bool has_eos = tokenizer.eos_id() >= 0;
  std::vector<TokenId> prompt = tokenizer.Encode(turn.prompt, has_bos, false);
  std::vector<TokenId> response = EncodeContinuation(tokenizer, turn.response);
  if (has_eos) response.push_back(tokenizer.eos_id());
  const std::size_t head = has_bos ? 1 : 0;                     // BOS is never cut.
  if (prompt.empty() || response.empty()) return std::nullopt;  // Nothing predicts / to learn.

  Example example;
  if (max_tokens != 0 && prompt.size() + response.size() > max_tokens) {
    if (head + 1 + response.size() > max_tokens) return std::nullopt;
    const std::size_t keep = max_tokens - response.size() - head;  // >= 1 prompt token.
    const std::size_t cut = prompt.size() - head - keep;
    prompt.erase(prompt.begin() + static_cast<std::ptrdiff_t>(head),
                 prompt.begin() + static_cast<std::ptrdiff_t>(head + cut));
    example.truncated = true;
  }
  example.prompt_len = prompt.size();
  example.tokens = std::move(prompt);
  example.tokens.insert(example.tokens.end(), response.begin(), response.end());
  return example;
}

Result<std::vector<Example>> EncodeRecords(std::span<const Record> records,
                                           std::span<const std::size_t> indices,
                                           const PromptTemplate& tmpl,
                                           const TextTokenizer& tokenizer, std::size_t max_tokens,
                                           EncodeStats* stats) {
  std::vector<Example> examples;
  examples.reserve(indices.size());
  for (std::size_t i : indices) {
    const Record& record = records[i];
    FEDLORA_ASSIGN_OR_RETURN(const std::vector<RenderedTurn> turns, RenderRecord(tmpl, record));
    for (const RenderedTurn& turn : turns) {
      std::optional<Example> example = EncodeTurn(turn, tokenizer, max_tokens);
      if (!example) {
        ++stats->dropped;
        continue;
      }
      example->label = record.label;
      example->answer = record.answer;
      example->record = i;
      if (example->truncated) ++stats->truncated;
      ++stats->examples;
      examples.push_back(std::move(*example));
    }
  }
  return examples;
}

std::int32_t LabelSet::Predict(std::span<const float> logits) const {
  FEDLORA_CHECK(!first_tokens.empty());
  std::int32_t best = 0;
  for (std::size_t c = 0; c < first_tokens.size(); ++c) {
    const auto id = static_cast<std::size_t>(first_tokens[c]);
    FEDLORA_CHECK_MSG(id < logits.size(), "label token ", id, " outside ", logits.size(),
                      " logits");
    if (logits[id] > logits[static_cast<std::size_t>(first_tokens[best])]) {
      best = static_cast<std::int32_t>(c);
    }
  }
  return best;
}

Result<LabelSet> MakeLabelSet(std::span<const std::string> words, const TextTokenizer& tokenizer) {
  if (words.size() < 2) {
    return InvalidArgument("a label set needs at least 2 label words, got ", words.size());
  }
  LabelSet set;
  for (const std::string& word : words) {
    std::vector<TokenId> tokens = EncodeContinuation(tokenizer, word);
    if (tokens.empty()) return InvalidArgument("label word '", word, "' encodes to no tokens");
    for (std::size_t c = 0; c < set.words.size(); ++c) {
      if (set.first_tokens[c] == tokens[0]) {
        return InvalidArgument("label words '", set.words[c], "' and '", word,
                               "' share their first token ", tokens[0],
                               " (hint: the first label token decides the prediction; pick "
                               "words that start differently)");
      }
    }
    set.words.push_back(word);
    set.first_tokens.push_back(tokens[0]);
    set.tokens.push_back(std::move(tokens));
  }
  return set;
}

PaddedBatch MakePaddedBatch(std::span<const Example> examples, std::span<const std::size_t> which,
                            TokenId pad_id) {
  FEDLORA_CHECK(!which.empty());
  PaddedBatch batch;
  batch.rows = which.size();
  for (std::size_t i : which) {
    FEDLORA_CHECK(i < examples.size());
    const Example& e = examples[i];
    FEDLORA_CHECK(e.prompt_len >= 1 && e.prompt_len < e.tokens.size());
    batch.cols = std::max(batch.cols, e.tokens.size() - 1);
  }
  const std::size_t cells = batch.rows * batch.cols;
  batch.inputs.assign(cells, pad_id);
  batch.targets.assign(cells, pad_id);
  batch.loss_weights.assign(cells, 0.0f);
  for (std::size_t r = 0; r < batch.rows; ++r) {
    const Example& e = examples[which[r]];
    const std::size_t base = r * batch.cols;
    for (std::size_t t = 0; t + 1 < e.tokens.size(); ++t) {
      batch.inputs[base + t] = e.tokens[t];
      batch.targets[base + t] = e.tokens[t + 1];
      batch.loss_weights[base + t] = t + 1 >= e.prompt_len ? 1.0f : 0.0f;
    }
    batch.prompt_ends.push_back(static_cast<std::int64_t>(e.prompt_len - 1));
    batch.labels.push_back(e.label);
  }
  return batch;
}

Result<PromptTemplate> ResolvePromptTemplate(const DataConfig& config) {
  Result<RecordFormat> format = ParseRecordFormat(config.format);
  if (!format.ok()) return format.status().WithContext("data.format");
  PromptTemplate tmpl;
  tmpl.kind = DefaultTemplate(*format);
  if (!config.template_name.empty()) {
    Result<TemplateKind> kind = ParseTemplateKind(config.template_name);
    if (!kind.ok()) return kind.status().WithContext("data.template");
    tmpl.kind = *kind;
  }
  FEDLORA_RETURN_IF_ERROR(CheckTemplateFits(tmpl.kind, *format).WithContext("data.template"));
  tmpl.classification = DefaultClassificationTemplate(*format);
  if (!config.label_words.empty()) {
    if (!IsClassificationFormat(*format)) {
      return InvalidArgument("data.label_words: format '", config.format, "' has no labels");
    }
    if (config.label_words.size() != tmpl.classification.label_words.size()) {
      return InvalidArgument("data.label_words: format '", config.format, "' has ",
                             tmpl.classification.label_words.size(), " classes, got ",
                             config.label_words.size(), " words");
    }
    tmpl.classification.label_words = config.label_words;
  }
  return tmpl;
}

Result<std::shared_ptr<const PartitionedRecords>> LoadPartitionedRecords(const DataConfig& config) {
  FEDLORA_RETURN_IF_ERROR(ValidateRecordConfig(config));
  Result<RecordPartitioner> partitioner = ParseRecordPartitioner(config.partition);
  if (!partitioner.ok()) return partitioner.status().WithContext("data.partition");
  auto out = std::make_shared<PartitionedRecords>();
  out->format = ParseRecordFormat(config.format).value();
  const RecordLoadOptions load_options{.limit = 0, .max_text_chars = config.max_text_chars};
  FEDLORA_ASSIGN_OR_RETURN(out->records, LoadRecords(out->format, config.path, load_options));
  std::vector<Record>& records = out->records;
  if (config.max_records != 0 && records.size() > config.max_records) {
    std::vector<std::size_t> order(records.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::mt19937_64 rng(MixSeed(config.partition_seed, kMaxRecordsStream));
    DeterministicShuffle(order, rng);
    order.resize(config.max_records);
    std::sort(order.begin(), order.end());
    std::vector<Record> kept;
    kept.reserve(order.size());
    for (std::size_t i : order) kept.push_back(std::move(records[i]));
    records = std::move(kept);
  }
  Result<Partitions> partitions =
      PartitionRecords(records, {.partitioner = *partitioner,
                                 .num_partitions = config.num_partitions,
                                 .seed = config.partition_seed,
                                 .alpha = config.dirichlet_alpha});
  if (!partitions.ok()) {
    return partitions.status().WithContext(
        StrCat("data.partition ", config.partition, " of '", config.path, "'"));
  }
  out->partitions = std::move(partitions).value();
  if (!config.eval_path.empty()) {
    Result<std::vector<Record>> loaded = LoadRecords(out->format, config.eval_path, load_options);
    if (!loaded.ok()) return loaded.status().WithContext("data.eval_path");
    out->eval_records = std::move(loaded).value();
  }
  return std::shared_ptr<const PartitionedRecords>(std::move(out));
}

Result<ClientExamples> LoadClientExamples(const DataConfig& config, const TextTokenizer& tokenizer,
                                          CorpusCache* corpus) {
  FEDLORA_RETURN_IF_ERROR(ValidateRecordConfig(config));
  ClientExamples out;
  FEDLORA_ASSIGN_OR_RETURN(out.prompt_template, ResolvePromptTemplate(config));
  out.format = ParseRecordFormat(config.format).value();
  std::size_t num_classes = 0;
  if (IsClassificationFormat(out.format)) {
    Result<LabelSet> labels =
        MakeLabelSet(out.prompt_template.classification.label_words, tokenizer);
    if (!labels.ok()) return labels.status().WithContext("data.label_words");
    out.labels = std::move(labels).value();
    num_classes = out.labels.size();
  }
  std::shared_ptr<const PartitionedRecords> shared;
  if (corpus != nullptr) {
    FEDLORA_ASSIGN_OR_RETURN(shared, corpus->Records(config));
  } else {
    FEDLORA_ASSIGN_OR_RETURN(shared, LoadPartitionedRecords(config));
  }
  const std::vector<Record>& records = shared->records;
  out.stats.file_records = records.size();
  const std::vector<std::size_t>& mine = shared->partitions[config.partition_index];
  if (mine.empty()) {
    return FailedPrecondition("partition ", config.partition_index, " of ", config.num_partitions,
                              " (", config.partition, ") of '", config.path, "' is empty (",
                              records.size(),
                              " records in all; hint: use fewer partitions or a larger "
                              "dirichlet_alpha)");
  }
  out.stats.partition_records = mine.size();

  std::vector<std::size_t> train_indices;
  std::vector<std::size_t> heldout_indices;
  if (config.eval_path.empty()) {
    HeldoutSplit split = SplitHeldout(mine, config.heldout_fraction,
                                      MixSeed(config.partition_seed, config.partition_index));
    train_indices = std::move(split.train);
    heldout_indices = std::move(split.heldout);
  } else {
    train_indices = mine;
    heldout_indices.resize(shared->eval_records.size());
    std::iota(heldout_indices.begin(), heldout_indices.end(), std::size_t{0});
  }
  const std::vector<Record>& heldout_source =
      config.eval_path.empty() ? records : shared->eval_records;
  out.stats.train_records = train_indices.size();
  out.stats.heldout_records = heldout_indices.size();
  if (num_classes > 0) {
    out.stats.train_label_histogram = LabelHistogram(records, train_indices, num_classes);
    out.stats.heldout_label_histogram =
        LabelHistogram(heldout_source, heldout_indices, num_classes);
  }

  FEDLORA_ASSIGN_OR_RETURN(out.train,
                           EncodeRecords(records, train_indices, out.prompt_template, tokenizer,
                                         config.max_tokens, &out.stats.train));
  FEDLORA_ASSIGN_OR_RETURN(
      out.heldout, EncodeRecords(heldout_source, heldout_indices, out.prompt_template, tokenizer,
                                 config.max_tokens, &out.stats.heldout));
  if (out.train.empty()) {
    return FailedPrecondition("no training example of partition ", config.partition_index, " of '",
                              config.path, "' fits data.max_tokens ", config.max_tokens, " (",
                              out.stats.train.dropped, " dropped)");
  }
  return out;
}

std::string ClientExamples::Summary(const DataConfig& config) const {
  std::string partition = config.partition;
  if (config.partition == "dirichlet" || config.partition == "quantity") {
    partition += StrCat(" a=", config.dirichlet_alpha);
  }
  return StrCat(RecordFormatName(format), "/", TemplateKindName(prompt_template.kind),
                ": partition ", config.partition_index, " of ", config.num_partitions, " (",
                partition, "): ", stats.partition_records, " records, train ", train.size(),
                Histogram(stats.train_label_histogram), ", held out ", heldout.size(),
                Histogram(stats.heldout_label_histogram),
                config.eval_path.empty() ? "" : " (eval_path)", ", ",
                stats.train.truncated + stats.heldout.truncated, " truncated, ",
                stats.train.dropped + stats.heldout.dropped, " dropped");
}

}  // namespace fedlora::client
