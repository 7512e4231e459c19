// make_seeds.cc — writes the seed corpora under tests/fuzz/corpus/ (fuzz_make_seeds SOURCE_DIR
// OUT_DIR; OUT_DIR is normally SOURCE_DIR/tests/fuzz/corpus).
//
// Seeds are real inputs made with our own encoders (every wire message kind with and without
// digests, uploads the fixed tasks accept, safetensors files, PEFT adapters as ExportPeft writes
// them, tiny llama2.c checkpoints in both layouts), real files from the repository (configs,
// tokenizer.json fixtures, the stories260K tokenizer), and a few edge cases per target. Minimised
// crash inputs (crash-*) are committed by hand next to them and are never overwritten here.
// Deterministic: running it again rewrites the same bytes.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/lora/peft.h"
#include "common/safetensors.h"
#include "common/wire/codec.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/upload_tasks.h"

namespace {

using namespace fedlora;
namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

fs::path g_out;

void Write(const std::string& target, const std::string& name, const Bytes& bytes) {
  const fs::path dir = g_out / target;
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s/%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

Bytes ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  const std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* p = reinterpret_cast<const std::byte*>(c.data());
  return Bytes(p, p + c.size());
}

Tensor Matrix(std::int64_t rows, std::int64_t cols, float start, float step = 0.25f) {
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = start + step * static_cast<float>(i);
  return MakeF32({rows, cols}, v);
}

// A flags byte followed by the message's frames, as wire_decode_fuzz.cc and
// upload_validation_fuzz.cc read them.
Bytes MessageInput(std::uint8_t flags, const wire::Envelope& envelope, bool digests) {
  const wire::EncodedMessage m = wire::Encode(envelope, {.tensor_digests = digests});
  std::vector<Bytes> frames;
  for (auto f : m.frames()) frames.emplace_back(f.begin(), f.end());
  Bytes out{std::byte{flags}};
  const Bytes joined = fuzz::JoinParts(frames);
  out.insert(out.end(), joined.begin(), joined.end());
  return out;
}

void WireSeeds() {
  wire::RoundTask task;
  task.round = 3;
  task.deadline_ms = 5000;
  task.lora = wire::LoraSpec{4, 8.0, 0.05, true, {"q_proj", "v_proj"}};
  task.train.upload_dtype = DType::kBF16;
  task.tensors["x.lora_A.weight"] = Matrix(4, 3, 1.0f);
  task.ticket = wire::TaskTicket{2, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
  task.base = wire::BaseUpdate{false, 1, 2, {}};
  wire::Update update;
  update.round = 3;
  update.num_samples = 16;
  update.num_examples = 40;
  update.metrics = {{"train_loss", 3.25}, {"steps", 10}};
  update.tensors["m.lora_A.weight"] = Matrix(2, 5, 0.5f);
  update.tensors["m.lora_B.weight"] = FromDoubles(DType::kF16, {3, 2}, std::vector<double>(6, 0.5));
  update.ticket = task.ticket;
  wire::EvalTask eval;
  eval.round = 3;
  eval.max_batches = 5;
  eval.tensors["x.lora_B.weight"] = FromDoubles(DType::kF64, {2, 2}, std::vector<double>{1, 2, 3, 4});
  const wire::Hello hello{"alice", "fedlora 0.1.0", std::string(64, 'a'),
                          wire::Capabilities{"cpu", 1 << 30, 16, 512, 1.5, false},
                          {{"model.layers.0.self_attn.q_proj", 64, 64}}, 0};
  wire::RoundTask secure_task = task;
  secure_task.secagg = wire::SecAggParams{
      1.0, 20, 32, wire::SecAggWeighting::kExamples, 1600, false, {{"m.lora_A.weight", {2, 5}}}};
  wire::PublicKey key{}, key2{};
  key[0] = 9;
  key2[0] = 10;
  std::array<std::uint8_t, 32> digest{};
  digest[3] = 1;
  std::array<std::uint8_t, 33> y{};
  y[32] = 4;
  const std::vector<std::pair<std::string, wire::Body>> bodies = {
      {"hello", hello},
      {"welcome", wire::Welcome{"alice", 250, 4, 12, "fedavg", {}}},
      {"round_task", task},
      {"update", update},
      {"ack", wire::Ack{3, 17}},
      {"heartbeat", wire::Heartbeat{}},
      {"eval_task", eval},
      {"eval_result", wire::EvalResult{3, 2.5, 1000, 12, {{"perplexity", 12.18}}, 0, eval.ticket}},
      {"error", wire::Error{wire::ErrorCode::kDigestMismatch, "bad bytes", 9}},
      {"bye", wire::Bye{"done"}},
      {"chunk", wire::Chunk{41, 1, 16, std::vector<std::byte>(24, std::byte{7})}},
      {"round_task_secagg", secure_task},
      {"secagg_keys", wire::SecAgg{3, task.ticket, wire::SecAggKeys{key, key2, digest}}},
      {"secagg_roster",
       wire::SecAgg{3, task.ticket,
                    wire::SecAggRoster{1, 2, {{1, "alice", key, key2}, {2, "bob", key2, key}}}}},
      {"secagg_shares",
       wire::SecAgg{3, task.ticket,
                    wire::SecAggShares{{{1, 2, std::vector<std::uint8_t>(110, 5)}}}}},
      {"secagg_unmask", wire::SecAgg{3, task.ticket, wire::SecAggUnmask{{1, 2}, {3}}}},
      {"secagg_reveal", wire::SecAgg{3, task.ticket, wire::SecAggReveal{{{1, 1, y}, {3, 2, y}}}}}};
  for (const auto& [name, body] : bodies) {
    const wire::Envelope envelope{wire::kProtocolVersion, 1234567890123ull, 42, body};
    Write("wire_decode", name + "-digests", MessageInput(1, envelope, true));
    Write("wire_decode", name + "-curve", MessageInput(0, envelope, false));
  }
  const wire::Envelope up{wire::kProtocolVersion, 7, 8, update};
  Write("wire_decode", "update-tight-limits", MessageInput(3, up, true));
  // The head of a chunked update (refs, no tensor frames).
  const wire::Envelope head{wire::kProtocolVersion, 7, 9, update, wire::ChunkedHead{.chunk_bytes = 16}};
  Write("wire_decode", "update-chunked-head-digests", MessageInput(1, head, true));
  Write("wire_decode", "update-chunked-head-curve", MessageInput(0, head, false));
  // Edge cases: nothing at all, an empty envelope frame, an update missing its tensor frames,
  // a newer peer's message kind, a newer protocol version.
  Write("wire_decode", "edge-empty", {});
  Write("wire_decode", "edge-one-empty-frame", Bytes{std::byte{1}, {}, {}, {}, {}});
  Bytes cut = MessageInput(1, up, true);
  {
    const wire::EncodedMessage m = wire::Encode(up);
    cut = Bytes{std::byte{1}};
    const Bytes joined = fuzz::JoinParts({Bytes(m.envelope.begin(), m.envelope.end())});
    cut.insert(cut.end(), joined.begin(), joined.end());
  }
  Write("wire_decode", "edge-missing-tensor-frames", cut);
  {
    const wire::EncodedMessage m = wire::EncodeWithUnknownKindForTesting(up, 200);
    std::vector<Bytes> frames;
    for (auto f : m.frames()) frames.emplace_back(f.begin(), f.end());
    Bytes out{std::byte{1}};
    const Bytes joined = fuzz::JoinParts(frames);
    out.insert(out.end(), joined.begin(), joined.end());
    Write("wire_decode", "edge-unknown-kind", out);
  }
  Write("wire_decode", "edge-other-version",
        MessageInput(1, wire::Envelope{wire::kProtocolVersion + 1, 1, 1, wire::Bye{"x"}}, true));
}

void UploadSeeds() {
  const fuzz::UploadTasks tasks = fuzz::MakeUploadTasks();
  const auto upload = [](const server::ClientTask& task, std::int64_t rank) {
    wire::Update u;
    u.round = 1;
    u.num_samples = 8;
    u.num_examples = 100;
    u.metrics = {{"train_loss", 2.5}};
    for (const auto& [name, expected] : task.expected_upload) {
      std::vector<std::int64_t> shape = expected.spec.shape;
      if (expected.shrinkable_dim >= 0) shape[expected.shrinkable_dim] = rank;
      std::vector<double> v(static_cast<std::size_t>(shape[0] * shape[1]));
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.01 * static_cast<double>(i % 17) - 0.05;
      u.tensors[name] = FromDoubles(expected.spec.dtype, shape, v);
    }
    return u;
  };
  const auto write = [](const std::string& name, std::uint8_t flags, const wire::Update& u) {
    const wire::Envelope e{wire::kProtocolVersion, 5, 9, u};
    Write("upload_validation", name, MessageInput(flags, e, (flags & 1) != 0));
  };
  const wire::Update plain = upload(tasks.plain, 2);
  write("accepted-f32", 1 | (1 << 1), plain);
  write("accepted-f32-curve", 1 << 1, plain);
  write("accepted-bf16-rank1", 1 | (2 << 1), upload(tasks.shrinkable, 1));
  write("accepted-bf16-rank2-max-examples-1", 1, upload(tasks.shrinkable, 2));
  wire::Update nan = plain;
  {
    Tensor& t = nan.tensors.begin()->second;
    const float q = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(t.data.data(), &q, sizeof q);
  }
  write("refused-nan", 1 | (1 << 1), nan);
  wire::Update extra = plain;
  extra.tensors["model.layers.0.self_attn.k_proj.lora_A.weight"] = Matrix(2, 8, 0.0f);
  write("refused-extra-tensor", 1 | (1 << 1), extra);
  wire::Update greedy = plain;
  greedy.num_samples = 1000000;
  write("refused-too-many-samples", 1 | (3 << 1), greedy);
  wire::Update metric = plain;
  metric.metrics["bad name!"] = 1.0;
  write("refused-metric-name", 1 | (1 << 1), metric);
}

void SafetensorsSeeds() {
  TensorMap tensors;
  tensors["a.f32"] = Matrix(2, 3, -1.0f);
  tensors["b.bf16"] = FromDoubles(DType::kBF16, {3}, std::vector<double>{1, -2, 3.5});
  tensors["c.f16"] = FromDoubles(DType::kF16, {1, 1, 2}, std::vector<double>{0.5, 65504});
  tensors["d.f64"] = FromDoubles(DType::kF64, {}, std::vector<double>{3.14159});
  tensors["e.empty"] = FromDoubles(DType::kF32, {0, 4}, std::vector<double>{});
  Write("safetensors", "four-dtypes-with-metadata.safetensors",
        safetensors::Serialize(tensors, {{"format", "pt"}, {"note", "seed"}}));
  Write("safetensors", "one-tensor.safetensors",
        safetensors::Serialize({{"w", Matrix(1, 2, 1.0f)}}));
  Write("safetensors", "no-tensors.safetensors", safetensors::Serialize({}));
  Write("safetensors", "shard-index.json", fuzz::AsBytes(R"({"metadata": {"total_size": 64},
 "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                "lm_head.weight": "model-00002-of-00002.safetensors"}})"));
  Write("safetensors", "config.json", fuzz::AsBytes(R"({"architectures": ["LlamaForCausalLM"],
 "hidden_size": 64, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "rope_type": "llama3"},
 "tie_word_embeddings": true, "torch_dtype": "float32", "bos_token_id": null, "x": -9223372036854775808})"));
  Write("safetensors", "edge-short-header", Bytes{std::byte{8}, {}, {}, {}});
}

void PeftSeeds() {
  TensorMap adapter;
  const std::string q = "model.layers.0.self_attn.q_proj", v = "model.layers.0.self_attn.v_proj";
  adapter[q + ".lora_A.weight"] = Matrix(2, 4, 0.1f);
  adapter[q + ".lora_B.weight"] = Matrix(4, 2, -0.1f);
  adapter[v + ".lora_A.weight"] = Matrix(1, 4, 0.2f);  // Rank 1: rank_pattern in the config.
  adapter[v + ".lora_B.weight"] = Matrix(3, 1, 0.3f);
  const auto write = [](const std::string& name, const lora::PeftAdapter& a, DType dtype) {
    const std::string config = lora::PeftConfigJson(a);
    Write("peft_import", name,
          fuzz::JoinParts({fuzz::AsBytes(config),
                           safetensors::Serialize(lora::PeftTensors(a, dtype), {{"format", "pt"}})}));
  };
  for (const bool rslora : {false, true}) {
    const wire::LoraSpec spec{2, 4.0, 0.05, rslora, {"q_proj", "v_proj"}};
    Result<lora::PeftAdapter> a = lora::PeftFromAdapter(adapter, spec, "stories260K");
    if (!a.ok()) {
      std::fprintf(stderr, "PeftFromAdapter: %s\n", a.status().ToString().c_str());
      std::exit(1);
    }
    write(rslora ? "adapter-rslora-f32" : "adapter-f32", a.value(), DType::kF32);
    if (!rslora) write("adapter-bf16", a.value(), DType::kBF16);
  }
  Write("peft_import", "edge-config-only",
        fuzz::JoinParts({fuzz::AsBytes(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16})")}));
  Write("peft_import", "edge-pickle-only",
        fuzz::JoinParts({fuzz::AsBytes(R"({"peft_type": "LORA"})"), {}, fuzz::AsBytes("pickle")}));
}

void YamlSeeds(const fs::path& source) {
  for (const char* file : {"configs/coordinator.yaml", "configs/client.yaml",
                           "configs/sim/shakespeare-hetlora.yaml", "configs/sim/spam-dirichlet.yaml"}) {
    const Bytes yaml = ReadFile(source / file);
    Write("yaml_config", fs::path(file).filename().string(), fuzz::JoinParts({yaml}));
  }
  Write("yaml_config", "with-overrides",
        fuzz::JoinParts({ReadFile(source / "configs/coordinator.yaml"),
                         fuzz::AsBytes("rounds=3"), fuzz::AsBytes("lora.targets=[q_proj, v_proj]"),
                         fuzz::AsBytes("strategy.name=hetlora"), fuzz::AsBytes("train.local_steps=5")}));
  Write("yaml_config", "edge-anchors-and-tags",
        fuzz::JoinParts({fuzz::AsBytes("base: &b {rank: 4}\nlora: *b\nrounds: !!str 5\n"
                                       "? [complex, key]\n: value\n")}));
}

void HfTokenizerSeeds(const fs::path& source) {
  const fs::path dir = source / "tests/data/tokenizers";
  for (const char* name : {"gpt2", "llama2", "llama3", "qwen2", "wordish", "behaviors"}) {
    std::vector<Bytes> parts = {ReadFile(dir / name / "tokenizer.json")};
    const fs::path config = dir / name / "tokenizer_config.json";
    parts.push_back(fs::exists(config) ? ReadFile(config) : Bytes{});
    parts.push_back(fuzz::AsBytes(" The  quick brown fox: 3.14 caf\xc3\xa9 <s> \xe2\x96\x81x\n"));
    Write("hf_tokenizer", name, fuzz::JoinParts(parts));
  }
}

// A llama2.c checkpoint of a tiny model (dim 8, FFN 16, 1 layer, 2 heads, `kv` kv-heads, vocab
// 12, seq_len 8) in the legacy or the version-1 layout, with deterministic small weights.
Bytes Llama2cCheckpoint(bool v1, bool shared, std::int32_t kv) {
  const std::int32_t dim = 8, hidden = 16, layers = 1, heads = 2, vocab = 12, seq = 8;
  const std::int64_t hs = dim / heads, kv_dim = kv * hs;
  Bytes out;
  const auto put = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);
  };
  const auto i32 = [&](std::int32_t x) { put(&x, 4); };
  std::int64_t floats = std::int64_t{vocab} * dim + 2 * layers * dim + dim +
                        layers * (2 * dim * dim + 2 * kv_dim * dim) + 3 * layers * hidden * dim;
  if (!shared) floats += std::int64_t{vocab} * dim;
  if (v1) {
    i32(0x616b3432);
    i32(1);
    for (std::int32_t x : {dim, hidden, layers, heads, kv, vocab, seq}) i32(x);
    out.push_back(std::byte{static_cast<unsigned char>(shared ? 1 : 0)});
    out.resize(256);
  } else {
    for (std::int32_t x : {dim, hidden, layers, heads, kv, shared ? vocab : -vocab, seq}) i32(x);
    floats += std::int64_t{seq} * hs;  // The RoPE tables the legacy layout stores.
  }
  for (std::int64_t i = 0; i < floats; ++i) {
    const float w = 0.02f * static_cast<float>((i * 7919) % 101 - 50) / 50.0f + (i % 9 == 0 ? 1.0f : 0.0f);
    put(&w, 4);
  }
  return out;
}

void Llama2cSeeds(const fs::path& source) {
  Write("llama2c_checkpoint", "legacy-shared", Llama2cCheckpoint(false, true, 2));
  Write("llama2c_checkpoint", "legacy-classifier-gqa", Llama2cCheckpoint(false, false, 1));
  Write("llama2c_checkpoint", "v1-shared", Llama2cCheckpoint(true, true, 2));
  Write("llama2c_checkpoint", "v1-classifier-gqa", Llama2cCheckpoint(true, false, 1));
  Bytes truncated = Llama2cCheckpoint(true, true, 2);
  truncated.resize(truncated.size() - 5);
  Write("llama2c_checkpoint", "edge-truncated", truncated);
  Bytes v2 = Llama2cCheckpoint(true, true, 2);
  v2[4] = std::byte{2};
  Write("llama2c_checkpoint", "edge-version-2", v2);

  Bytes tok512{std::byte{0x00}, std::byte{0x02}, {}, {}};  // vocab_size 512, little-endian.
  const Bytes file = ReadFile(source / "assets/models/stories260K/tok512.bin");
  tok512.insert(tok512.end(), file.begin(), file.end());
  Write("llama2c_tokenizer", "stories260K-tok512", tok512);
  // The smallest valid tokenizer: <unk>, <s>, </s>, the 256 byte pieces, then " " and "ab".
  Bytes small;
  const auto put = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    small.insert(small.end(), b, b + n);
  };
  const auto piece = [&](float score, const std::string& s) {
    const auto len = static_cast<std::int32_t>(s.size());
    put(&score, 4);
    put(&len, 4);
    put(s.data(), s.size());
  };
  const std::int32_t vocab = 3 + 256 + 2, max_len = 6;
  put(&vocab, 4);
  put(&max_len, 4);
  piece(0, "<unk>");
  piece(0, "\n<s>\n");
  piece(0, "\n</s>\n");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    piece(0, name);
  }
  piece(-1, " ");
  piece(-2, "ab");
  Write("llama2c_tokenizer", "minimal-261", small);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SOURCE_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path source = argv[1];
  g_out = argv[2];
  WireSeeds();
  UploadSeeds();
  SafetensorsSeeds();
  PeftSeeds();
  YamlSeeds(source);
  HfTokenizerSeeds(source);
  Llama2cSeeds(source);
  std::printf("seeds written under %s\n", g_out.c_str());
  return 0;
}
