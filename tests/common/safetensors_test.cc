#include "common/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

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

TEST(SafetensorsTest, WriteAndReadAFile) {
  const std::string path = ::testing::TempDir() + "/fedlora_st_test.safetensors";
  ASSERT_TRUE(Write(path, Sample()).ok());
  const Result<File> f = Read(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->tensors, Sample());
  std::filesystem::remove(path);
  EXPECT_EQ(Read(path).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedlora::safetensors
