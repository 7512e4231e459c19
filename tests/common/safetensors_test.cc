#include "common/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

namespace fedlora::safetensors {
namespace {

TensorMap Sample() {
  TensorMap m;
  m["b.lora_B.weight"] = FromDoubles(DType::kBF16, {3, 2}, std::vector<double>{1, 2, 3, 4, 5, 6});
  m["a.lora_A.weight"] = MakeF32({2, 2}, std::vector<float>{0.5f, -0.5f, 1.5f, 2.5f});
  m["scalar"] = MakeF64({}, std::vector<double>{3.0});
  return m;
}

std::vector<std::byte> WithHeader(const std::string& json, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + json.size() + data_bytes);
  const std::uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, json.data(), json.size());
  return out;
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  const std::vector<std::byte> bytes = Serialize(Sample(), {{"format", "pt"}});
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);  // The data section starts 8-byte aligned.
  const Result<File> f = Parse(bytes, "mem");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->tensors, Sample());
  EXPECT_EQ(f->metadata.at("format"), "pt");
}

TEST(SafetensorsTest, RejectsTruncatedFile) {
  std::vector<std::byte> bytes = Serialize(Sample());
  bytes.resize(bytes.size() - 3);
  const Result<File> f = Parse(bytes, "cut.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(f.status().message().find("cut.safetensors"), std::string::npos);
  EXPECT_FALSE(Parse(std::vector<std::byte>(5), "tiny").ok());
}

TEST(SafetensorsTest, RejectsHeaderThatLiesAboutOffsets) {
  const std::string json =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})";  // 2 floats are 8 bytes.
  const Result<File> f = Parse(WithHeader(json, 16), "lie.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("'w'"), std::string::npos) << f.status().message();
  const std::string past_end = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_FALSE(Parse(WithHeader(past_end, 4), "short").ok());
  const std::string overlap =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_FALSE(Parse(WithHeader(overlap, 8), "overlap").ok());
}

TEST(SafetensorsTest, RejectsUnknownDtypeNamingTheTensor) {
  const std::string json = R"({"w":{"dtype":"I4","shape":[2],"data_offsets":[0,1]}})";
  const Result<File> f = Parse(WithHeader(json, 1), "int4.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("'I4'"), std::string::npos);
}

TEST(SafetensorsTest, RejectsHeaderLengthBeyondTheFileAndInvalidJson) {
  std::vector<std::byte> bytes(16);
  const std::uint64_t huge = 1ull << 40;
  std::memcpy(bytes.data(), &huge, 8);
  EXPECT_FALSE(Parse(bytes, "huge").ok());
  EXPECT_FALSE(Parse(WithHeader("{not json", 0), "junk").ok());
}

std::string WriteBytes(const std::string& name, std::span<const std::byte> bytes) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return path;
}

bool Mentions(const Status& s, std::string_view text) {
  return s.message().find(text) != std::string::npos;
}

TEST(SafetensorsTest, WriteAndReadAFile) {
  const std::string path = ::testing::TempDir() + "/fedlora_st_test.safetensors";
  ASSERT_TRUE(Write(path, Sample()).ok());
  const Result<File> f = Read(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->tensors, Sample());
  std::filesystem::remove(path);
  EXPECT_EQ(Read(path).status().code(), StatusCode::kNotFound);
}

TEST(SafetensorsTest, MappedFileSeesTheSameTensorsAsReadWithoutCopying) {
  const std::string path =
      WriteBytes("fedlora_st_mapped.safetensors", Serialize(Sample(), {{"format", "pt"}}));
  const Result<std::shared_ptr<const MappedFile>> mapped = MappedFile::Open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  const MappedFile& file = **mapped;
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), Sample().size());
  for (const auto& [name, want] : Sample()) {
    const TensorView* view = file.Find(name);
    ASSERT_NE(view, nullptr) << name;
    EXPECT_EQ(view->dtype, want.dtype);
    EXPECT_EQ(view->shape, want.shape);
    EXPECT_EQ(std::vector<std::byte>(view->data.begin(), view->data.end()), want.data) << name;
  }
  EXPECT_EQ(file.Find("absent"), nullptr);
  EXPECT_EQ(file.size_bytes(), std::filesystem::file_size(path));
  // Views stay valid after the file is unlinked: the mapping holds the inode.
  std::filesystem::remove(path);
  const std::span<const std::byte> bytes = file.Find("scalar")->data;
  const Tensor scalar{DType::kF64, {}, std::vector<std::byte>(bytes.begin(), bytes.end())};
  EXPECT_EQ(ToDoubles(scalar), std::vector<double>{3.0});
}

TEST(SafetensorsTest, ParseViewAndParseAcceptAndRejectTheSameBytes) {
  const std::vector<std::byte> good = Serialize(Sample());
  const Result<FileView> view = ParseView(good, "mem");
  ASSERT_TRUE(view.ok());
  // Views borrow `good`'s bytes: the data of every tensor lies inside it.
  for (const auto& [name, v] : view->tensors) {
    EXPECT_GE(v.data.data(), good.data()) << name;
    EXPECT_LE(v.data.data() + v.data.size(), good.data() + good.size()) << name;
  }
  std::vector<std::byte> cut = good;
  cut.resize(cut.size() - 1);
  const Status a = ParseView(cut, "cut").status();
  const Status b = Parse(cut, "cut").status();
  EXPECT_EQ(a.code(), StatusCode::kDataLoss);
  EXPECT_EQ(a.code(), b.code());
  EXPECT_EQ(a.message(), b.message());
}

TEST(SafetensorsTest, MappedFileRejectsMalformedFilesNamingFileAndTensor) {
  // Truncated: the last tensor's bytes run past the end.
  std::vector<std::byte> bytes = Serialize(Sample());
  bytes.resize(bytes.size() - 3);
  std::string path = WriteBytes("fedlora_st_cut.safetensors", bytes);
  Status s = MappedFile::Open(path).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s, path)) << s.message();

  // Empty and too short for the length prefix.
  for (std::size_t size : {0, 5}) {
    path = WriteBytes("fedlora_st_tiny.safetensors", std::vector<std::byte>(size));
    s = MappedFile::Open(path).status();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << size;
    EXPECT_TRUE(Mentions(s, path)) << s.message();
  }

  // Offsets past the end of the data section.
  path = WriteBytes("fedlora_st_past.safetensors",
                    WithHeader(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 8));
  s = MappedFile::Open(path).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s, path) && Mentions(s, "'w'")) << s.message();

  // Two tensors claiming overlapping bytes: both are named.
  path = WriteBytes("fedlora_st_overlap.safetensors",
                    WithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               12));
  s = MappedFile::Open(path).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s, path) && Mentions(s, "'a'") && Mentions(s, "'b'")) << s.message();

  // A dtype we cannot widen to float.
  path = WriteBytes("fedlora_st_i8.safetensors",
                    WithHeader(R"({"q":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})", 4));
  s = MappedFile::Open(path).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(s, path) && Mentions(s, "'q'") && Mentions(s, "'I8'")) << s.message();

  s = MappedFile::Open(::testing::TempDir() + "/fedlora_st_absent.safetensors").status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_TRUE(Mentions(s, "fedlora_st_absent.safetensors")) << s.message();
}

TEST(SafetensorsTest, MappedFileAcceptsBf16F16AndMisalignedTensors) {
  TensorMap m;
  m["a"] = FromDoubles(DType::kBF16, {1}, std::vector<double>{-2});  // 2 bytes...
  m["b"] = MakeF32({1}, std::vector<float>{7.0f});  // ...so this float starts at data offset 2.
  m["c"] = FromDoubles(DType::kF16, {1}, std::vector<double>{0.25});
  const std::string path = WriteBytes("fedlora_st_half.safetensors", Serialize(m));
  const Result<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const auto values = [&](std::string_view name) {
    const TensorView& v = *(*file)->Find(name);
    return ToDoubles(
        Tensor{v.dtype, v.shape, std::vector<std::byte>(v.data.begin(), v.data.end())});
  };
  EXPECT_EQ((*file)->Find("a")->dtype, DType::kBF16);
  EXPECT_EQ((*file)->Find("c")->dtype, DType::kF16);
  EXPECT_EQ(values("a"), std::vector<double>{-2});
  EXPECT_EQ(values("b"), std::vector<double>{7});
  EXPECT_EQ(values("c"), std::vector<double>{0.25});
  EXPECT_NE(reinterpret_cast<std::uintptr_t>((*file)->Find("b")->data.data()) % 4, 0u);
}

TEST(SafetensorsTest, StreamedWriteIsByteIdenticalToSerialize) {
  const TensorMap tensors = Sample();
  TensorSpecs specs;
  for (const auto& [name, t] : tensors) specs.emplace(name, t.spec());
  const std::string path = ::testing::TempDir() + "/fedlora_st_streamed.safetensors";
  std::vector<std::string> order;
  const Status s = WriteSyncedStreaming(
      path, specs,
      [&](const std::string& name) -> Result<std::span<const std::byte>> {
        order.push_back(name);
        return std::span<const std::byte>(tensors.at(name).data);
      },
      {{"format", "pt"}});
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::vector<std::byte> want = Serialize(tensors, {{"format", "pt"}});
  std::ifstream in(path, std::ios::binary);
  const std::string got((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(got, std::string(reinterpret_cast<const char*>(want.data()), want.size()));
  EXPECT_EQ(order, (std::vector<std::string>{"a.lora_A.weight", "b.lora_B.weight", "scalar"}));

  const Status wrong = WriteSyncedStreaming(path, specs, [](const std::string&) {
    return Result<std::span<const std::byte>>(std::span<const std::byte>());
  });
  EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(wrong, "a.lora_A.weight")) << wrong.message();
  EXPECT_FALSE(std::filesystem::exists(path));  // The partial file is removed.
}

TEST(SafetensorsTest, ShardIndexMapsTensorsToPlainFileNamesOnly) {
  const Result<ShardIndex> index = ParseShardIndex(
      R"({"metadata": {"total_size": 12},)"
      R"( "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}})",
      "index.json");
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_EQ(index->at("a"), "m-1.safetensors");
  EXPECT_EQ(index->at("b"), "m-2.safetensors");
  for (const char* bad : {R"({"weight_map": {"a": "../x.safetensors"}})",
                          R"({"weight_map": {"a": "/etc/passwd"}})",
                          R"({"weight_map": {"a": ".."}})",
                          R"({"weight_map": {"a": 3}})", R"({"weight_map": []})", R"({})", "[1]",
                          "{oops"}) {
    const Status s = ParseShardIndex(bad, "bad_index.json").status();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << bad;
    EXPECT_TRUE(Mentions(s, "bad_index.json")) << s.message();
  }
  EXPECT_EQ(ReadShardIndex(::testing::TempDir() + "/no_index.json").status().code(),
            StatusCode::kNotFound);
}

TEST(SafetensorsTest, JsonLeavesFlattenNestedObjectsWithDots) {
  const Result<JsonLeaves> leaves = ParseJsonLeaves(
      R"({"hidden_size": 64, "rms_norm_eps": 1e-05, "model_type": "llama", "tie": true,)"
      R"( "rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "nothing": null, "empty": {},)"
      R"( "eos_token_id": [1, 2]})",
      "config.json");
  ASSERT_TRUE(leaves.ok()) << leaves.status().ToString();
  using Kind = JsonLeaf::Kind;
  EXPECT_EQ(leaves->at("hidden_size").kind, Kind::kInteger);
  EXPECT_EQ(leaves->at("hidden_size").integer, 64);
  EXPECT_EQ(leaves->at("rms_norm_eps").kind, Kind::kNumber);
  EXPECT_EQ(leaves->at("rms_norm_eps").number, 1e-5);
  EXPECT_EQ(leaves->at("model_type").text, "llama");
  EXPECT_TRUE(leaves->at("tie").boolean);
  EXPECT_EQ(leaves->at("rope_scaling.rope_type").text, "llama3");
  EXPECT_EQ(leaves->at("rope_scaling.factor").number, 8.0);
  EXPECT_FALSE(leaves->contains("rope_scaling"));
  EXPECT_EQ(leaves->at("nothing").kind, Kind::kNull);
  EXPECT_EQ(leaves->at("empty").kind, Kind::kNull);
  EXPECT_EQ(leaves->at("eos_token_id").kind, Kind::kArray);
  EXPECT_EQ(leaves->at("eos_token_id").text, "[1,2]");
  const Status s = ParseJsonLeaves("{\"a\": ", "broken.json").status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(s, "broken.json")) << s.message();
}

}  // namespace
}  // namespace fedlora::safetensors
