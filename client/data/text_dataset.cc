#include "client/data/text_dataset.h"

#include "client/data/corpus_cache.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>

namespace fedlora::client {
namespace {

struct TextFileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

std::size_t FirstInvalidUtf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    const std::uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {

bool IsBlankLine(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

Status ValidateDataConfig(const DataConfig& config) {
  if (config.format != "text") {
    return InvalidArgument("data.format '", config.format,
                           "' is not plain text (hint: record formats load with "
                           "LoadClientExamples, examples.h)");
  }
  if (config.num_partitions == 0) return InvalidArgument("data.num_partitions must be >= 1");
  if (config.partition_index >= config.num_partitions) {
    return InvalidArgument("data.partition_index ", config.partition_index,
                           " is out of range for data.num_partitions ", config.num_partitions);
  }
  if (!(config.heldout_fraction >= 0.0 && config.heldout_fraction < 1.0)) {
    return InvalidArgument("data.heldout_fraction ", config.heldout_fraction,
                           " must be in [0, 1)");
  }
  return OkStatus();
}

}  // namespace

std::uint64_t UniformBelow(std::mt19937_64& rng, std::uint64_t n) {
  FEDLORA_CHECK(n > 0);
  // Reject the top partial bucket so every residue is equally likely.
  const std::uint64_t limit = std::uint64_t(-1) - (std::uint64_t(-1) % n);
  std::uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

void DeterministicShuffle(std::span<std::size_t> values, std::mt19937_64& rng) {
  for (std::size_t i = values.size(); i > 1; --i) {
    std::swap(values[i - 1], values[UniformBelow(rng, i)]);
  }
}

Result<std::string> ReadTextFile(const std::string& path) {
  std::unique_ptr<std::FILE, TextFileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) return NotFound("cannot open text file '", path, "': ", std::strerror(errno));
  std::string raw;
  char buffer[1 << 16];
  std::size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, file.get())) > 0) raw.append(buffer, n);
  if (std::ferror(file.get())) {
    return DataLoss("error reading text file '", path, "': ", std::strerror(errno));
  }
  if (const std::size_t bad = FirstInvalidUtf8(raw); bad != std::string_view::npos) {
    return InvalidArgument("text file '", path, "' is not valid UTF-8 at byte ", bad);
  }
  std::string text;
  text.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n') continue;
    text.push_back(raw[i]);
  }
  return text;
}

std::vector<std::string> SplitParagraphs(std::string_view text) {
  std::vector<std::string> paragraphs;
  std::string current;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    if (IsBlankLine(line)) {
      if (!current.empty()) paragraphs.push_back(std::move(current));
      current.clear();
    } else {
      if (!current.empty()) current.push_back('\n');
      current.append(line);
    }
    pos = end + 1;
  }
  if (!current.empty()) paragraphs.push_back(std::move(current));
  return paragraphs;
}

std::string_view SpeakerOf(std::string_view paragraph) {
  std::string_view first = paragraph.substr(0, paragraph.find('\n'));
  if (!first.empty() && first.back() == ':') first.remove_suffix(1);
  return first;
}

Result<Partitioner> ParsePartitioner(std::string_view name) {
  if (name == "none") return Partitioner::kNone;
  if (name == "iid") return Partitioner::kIid;
  if (name == "contiguous") return Partitioner::kContiguous;
  if (name == "speaker") return Partitioner::kSpeaker;
  if (name == "sample") return Partitioner::kSample;
  return InvalidArgument("unknown partitioner '", name,
                         "' (expected one of: none, iid, contiguous, speaker, sample)");
}

std::string_view PartitionerName(Partitioner partitioner) {
  switch (partitioner) {
    case Partitioner::kNone: return "none";
    case Partitioner::kIid: return "iid";
    case Partitioner::kContiguous: return "contiguous";
    case Partitioner::kSpeaker: return "speaker";
    case Partitioner::kSample:
      return "sample";
  }
  return "invalid";
}

std::vector<std::size_t> SampleShare(std::size_t n, std::uint32_t sample_size, std::uint64_t seed,
                                     std::uint32_t index) {
  std::vector<std::size_t> share;
  if (n == 0) return share;
  std::mt19937_64 rng(MixSeed(seed, index));
  const std::size_t k = std::min<std::size_t>(sample_size, n);
  if (2 * k > n) {  // Most of the corpus: a shuffle's prefix.
    std::vector<std::size_t> all(n);
    std::iota(all.begin(), all.end(), std::size_t{0});
    DeterministicShuffle(all, rng);
    share.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k));
    std::sort(share.begin(), share.end());
  } else {  // A few of many: draw until k distinct (expected < 2k draws), kept sorted.
    share.reserve(k);
    while (share.size() < k) {
      const std::size_t draw = UniformBelow(rng, n);
      const auto at = std::lower_bound(share.begin(), share.end(), draw);
      if (at == share.end() || *at != draw) share.insert(at, draw);
    }
  }
  return share;
}

Result<std::vector<std::vector<std::size_t>>> PartitionParagraphs(
    std::span<const std::string> paragraphs, const PartitionSpec& spec) {
  if (spec.num_partitions == 0) return InvalidArgument("num_partitions must be >= 1");
  if (spec.partitioner == Partitioner::kSample && spec.sample_size == 0) {
    return InvalidArgument("the sample partitioner needs sample_size >= 1");
  }
  const std::size_t n = paragraphs.size();
  const std::size_t parts = spec.num_partitions;
  std::vector<std::vector<std::size_t>> out(parts);
  std::vector<std::size_t> all(n);
  std::iota(all.begin(), all.end(), std::size_t{0});

  switch (spec.partitioner) {
    case Partitioner::kNone:
      for (auto& part : out) part = all;
      return out;

    case Partitioner::kIid: {
      std::mt19937_64 rng(spec.seed);
      DeterministicShuffle(all, rng);
      for (std::size_t k = 0; k < n; ++k) out[k % parts].push_back(all[k]);
      break;
    }

    case Partitioner::kContiguous: {
      // Paragraph i goes to the part its character midpoint falls in: boundaries at multiples
      // of total/parts, and the assignment is monotone, so each part is a consecutive run.
      unsigned __int128 total = 0;
      for (const std::string& p : paragraphs) total += p.size();
      unsigned __int128 start = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const unsigned __int128 mid2 = 2 * start + paragraphs[i].size();  // 2 x midpoint.
        const std::size_t part =
            total == 0 ? 0 : std::min<std::size_t>(parts - 1, mid2 * parts / (2 * total));
        out[part].push_back(i);
        start += paragraphs[i].size();
      }
      break;
    }

    case Partitioner::kSample:
      for (std::uint32_t i = 0; i < spec.num_partitions; ++i) {
        out[i] = SampleShare(n, spec.sample_size, spec.seed, i);
      }
      return out;

    case Partitioner::kSpeaker: {
      std::map<std::string_view, std::uint64_t> load_of_speaker;  // Name order.
      for (const std::string& p : paragraphs) load_of_speaker[SpeakerOf(p)] += p.size();
      std::vector<std::pair<std::string_view, std::uint64_t>> speakers(load_of_speaker.begin(),
                                                                       load_of_speaker.end());
      std::stable_sort(speakers.begin(), speakers.end(),
                       [](const auto& a, const auto& b) { return a.second > b.second; });
      std::vector<std::uint64_t> load(parts, 0);
      std::map<std::string_view, std::size_t> part_of_speaker;
      for (const auto& [name, size] : speakers) {
        const std::size_t part =
            static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
        load[part] += size;
        part_of_speaker[name] = part;
      }
      for (std::size_t i = 0; i < n; ++i) {
        out[part_of_speaker.at(SpeakerOf(paragraphs[i]))].push_back(i);
      }
      break;
    }
  }
  for (auto& part : out) std::sort(part.begin(), part.end());
  return out;
}

HeldoutSplit SplitHeldout(std::span<const std::size_t> paragraphs, double fraction,
                          std::uint64_t seed) {
  FEDLORA_CHECK_MSG(fraction >= 0.0 && fraction < 1.0, "heldout fraction ", fraction);
  const std::size_t n = paragraphs.size();
  std::size_t held = static_cast<std::size_t>(std::llround(fraction * static_cast<double>(n)));
  if (fraction > 0.0 && n >= 2) held = std::clamp<std::size_t>(held, 1, n - 1);
  if (n <= 1) held = 0;  // Training needs the data more than evaluation does.

  std::vector<std::size_t> order(paragraphs.begin(), paragraphs.end());
  std::mt19937_64 rng(seed);
  DeterministicShuffle(order, rng);
  HeldoutSplit split;
  split.heldout.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(held));
  split.train.assign(order.begin() + static_cast<std::ptrdiff_t>(held), order.end());
  std::sort(split.heldout.begin(), split.heldout.end());
  std::sort(split.train.begin(), split.train.end());
  return split;
}

std::string JoinParagraphs(std::span<const std::string> paragraphs,
                           std::span<const std::size_t> indices) {
  std::size_t size = 0;
  for (std::size_t i : indices) size += paragraphs[i].size() + 2;
  std::string out;
  out.reserve(size);
  for (std::size_t k = 0; k < indices.size(); ++k) {
    if (k > 0) out.append("\n\n");
    out.append(paragraphs[indices[k]]);
  }
  return out;
}

std::vector<TokenWindow> MakeWindows(std::size_t stream_size, std::size_t seq_len) {
  FEDLORA_CHECK(seq_len > 0);
  std::vector<TokenWindow> windows;
  if (stream_size == 0) return windows;
  if (stream_size < seq_len) return {TokenWindow{0, stream_size}};
  windows.reserve(stream_size / seq_len);
  for (std::size_t begin = 0; begin + seq_len <= stream_size; begin += seq_len) {
    windows.push_back({begin, seq_len});
  }
  return windows;
}

Result<ClientData> LoadClientData(const DataConfig& config, const TextTokenizer& tokenizer,
                                  CorpusCache* corpus) {
  FEDLORA_RETURN_IF_ERROR(ValidateDataConfig(config));
  std::shared_ptr<const PartitionedText> text;
  if (corpus != nullptr) {
    FEDLORA_ASSIGN_OR_RETURN(text, corpus->Text(config));
  } else {
    FEDLORA_ASSIGN_OR_RETURN(text, PartitionedText::Load(config));
  }
  const std::span<const std::string> paragraphs = text->paragraphs();
  const std::vector<std::size_t> mine = text->Share(config.partition_index);
  if (mine.empty()) {
    return FailedPrecondition("partition ", config.partition_index, " of ", config.num_partitions,
                              " (", config.partition, ") of '", config.path, "' is empty (",
                              paragraphs.size(),
                              " paragraphs in all; hint: use fewer partitions, or partition: "
                              "sample)");
  }
  const HeldoutSplit split =
      SplitHeldout(mine, config.heldout_fraction,
                   MixSeed(config.partition_seed, config.partition_index));
  ClientData data;
  data.train = tokenizer.Encode(JoinParagraphs(paragraphs, split.train), false, false);
  data.heldout = tokenizer.Encode(JoinParagraphs(paragraphs, split.heldout), false, false);
  data.train_paragraphs = split.train.size();
  data.heldout_paragraphs = split.heldout.size();
  return data;
}

}  // namespace fedlora::client
