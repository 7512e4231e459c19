#include "client/train/client_dataset.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "client/data/record_sources.h"

namespace fedlora::client {

Result<std::unique_ptr<ClientDataset>> ClientDataset::Load(const DataConfig& config,
                                                           const TextTokenizer& tokenizer,
                                                           std::size_t context,
                                                           CorpusCache* corpus) {
  std::unique_ptr<ClientDataset> d(new ClientDataset());
  d->bos_ = tokenizer.bos_id();
  d->pad_ = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : 0;
  d->context_ = context;
  d->init_from_train_ = config.init_from_train;
  d->text_mode_ = config.format == "text";
  if (d->text_mode_) {
    FEDLORA_ASSIGN_OR_RETURN(d->text_, LoadClientData(config, tokenizer, corpus));
    d->summary_ = StrCat("text ", config.path, ": ", d->text_.train_paragraphs, " paragraphs (",
                         d->text_.train.size(), " tokens) for training, ",
                         d->text_.heldout_paragraphs, " (", d->text_.heldout.size(),
                         " tokens) held out");
  } else {
    DataConfig clamped = config;
    // An example of n tokens feeds n - 1 positions to the model.
    const auto limit = static_cast<std::uint32_t>(std::min<std::size_t>(context + 1, UINT32_MAX));
    if (clamped.max_tokens == 0 || clamped.max_tokens > limit) clamped.max_tokens = limit;
    FEDLORA_ASSIGN_OR_RETURN(d->examples_, LoadClientExamples(clamped, tokenizer, corpus));
    if (d->examples_.train.empty()) {
      return FailedPrecondition("data.path '", config.path, "': no training example for partition ",
                                config.partition_index, " of ", config.num_partitions);
    }
    // Held-out examples come in file order, and files are often sorted by label (SpamAssassin):
    // a seeded shuffle makes any prefix (data.max_eval_windows) a fair sample.
    std::vector<std::size_t> order(d->examples_.heldout.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::mt19937_64 rng(MixSeed(config.partition_seed, 0xE7A1));
    DeterministicShuffle(order, rng);
    std::vector<Example> shuffled;
    shuffled.reserve(order.size());
    for (std::size_t i : order) shuffled.push_back(std::move(d->examples_.heldout[i]));
    d->examples_.heldout = std::move(shuffled);
    for (const Example& e : d->examples_.heldout) {
      d->heldout_labels_.push_back(e.label);
      if (!e.answer.empty()) d->has_answers_ = true;
    }
    if (!d->examples_.labels.empty()) d->label_tokens_ = d->examples_.labels.first_tokens;
    d->summary_ = d->examples_.Summary(clamped);
  }
  if (!config.init_path.empty()) {  // A whole corpus declared for initialisation.
    std::shared_ptr<const std::vector<std::string>> paragraphs;
    if (corpus != nullptr) {
      FEDLORA_ASSIGN_OR_RETURN(paragraphs, corpus->Paragraphs(config.init_path));
    } else {
      FEDLORA_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(config.init_path));
      paragraphs = std::make_shared<const std::vector<std::string>>(SplitParagraphs(text));
    }
    std::vector<std::size_t> all(paragraphs->size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    d->init_stream_ = tokenizer.Encode(JoinParagraphs(*paragraphs, all), false, false);
  }
  return d;
}

std::vector<SequenceView> ClientDataset::Views(std::span<const Example> examples) const {
  std::vector<SequenceView> views;
  views.reserve(examples.size());
  for (const Example& e : examples) views.push_back({e.tokens, e.prompt_len});
  return views;
}

std::uint64_t ClientDataset::TrainRows(std::uint32_t seq_len) const {
  if (!text_mode_) return examples_.train.size();
  return seq_len == 0 ? 0 : MakeWindows(text_.train.size(), seq_len).size();
}

namespace {

std::unique_ptr<SequenceSource> ExamplesOrDie(std::vector<SequenceView> views, std::size_t context,
                                              TokenId pad, std::uint64_t max_rows) {
  if (max_rows > 0 && views.size() > max_rows) views.resize(max_rows);
  // Lengths were clamped to the context at load, so Make cannot fail here.
  Result<ExampleSource> source = ExampleSource::Make(std::move(views), context, pad);
  FEDLORA_CHECK_MSG(source.ok(), source.status().ToString());
  return std::make_unique<ExampleSource>(std::move(source).value());
}

}  // namespace

std::unique_ptr<SequenceSource> ClientDataset::TrainSource(std::uint32_t seq_len) const {
  if (text_mode_) return std::make_unique<WindowSource>(text_.train, seq_len, bos_);
  return ExamplesOrDie(Views(examples_.train), context_, pad_, 0);
}

std::unique_ptr<SequenceSource> ClientDataset::HeldoutSource(std::uint32_t seq_len,
                                                             std::uint64_t max_rows) const {
  if (text_mode_) {
    auto source = std::make_unique<WindowSource>(text_.heldout, seq_len, bos_);
    if (max_rows > 0) source->Truncate(max_rows);
    return source;
  }
  return ExamplesOrDie(Views(examples_.heldout), context_, pad_, max_rows);
}

std::unique_ptr<SequenceSource> ClientDataset::InitSource(std::uint32_t seq_len,
                                                          std::uint64_t max_rows) const {
  std::unique_ptr<SequenceSource> source;
  if (!init_stream_.empty()) {
    auto windows = std::make_unique<WindowSource>(init_stream_, seq_len, bos_);
    if (max_rows > 0) windows->Truncate(max_rows);
    return windows;
  }
  if (!init_from_train_) return nullptr;
  if (text_mode_) {
    auto windows = std::make_unique<WindowSource>(text_.train, seq_len, bos_);
    if (max_rows > 0) windows->Truncate(max_rows);
    return windows;
  }
  return ExamplesOrDie(Views(examples_.train), context_, pad_, max_rows);
}

std::span<const Example> ClientDataset::heldout_examples() const { return examples_.heldout; }

bool AnswerMatches(std::string_view generated, std::string_view answer) {
  const std::string got = ExtractFinalAnswer(generated);
  return !got.empty() && got == answer;
}

std::uint64_t ClientDataset::MemoryBytes() const {
  const auto tokens = [](const std::vector<TokenId>& v) {
    return static_cast<std::uint64_t>(v.capacity()) * sizeof(TokenId);
  };
  std::uint64_t bytes = tokens(text_.train) + tokens(text_.heldout) + tokens(init_stream_) +
                        tokens(label_tokens_) + heldout_labels_.capacity() * sizeof(std::int32_t);
  for (const std::vector<Example>* split : {&examples_.train, &examples_.heldout}) {
    for (const Example& e : *split) bytes += sizeof(Example) + tokens(e.tokens) + e.answer.capacity();
  }
  return bytes;
}

}  // namespace fedlora::client
