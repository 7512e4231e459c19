// fedlora-agg's library entry point, with real files: exactness in fp64, Fed-SB's shared
// factors, FSLoRA's sketches, and errors that name the file at fault.
#include "server/offline_aggregator.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/lora/peft.h"
#include "common/safetensors.h"
#include "tests/server/strategies/strategy_test_util.h"

namespace fedlora::server {
namespace {

using namespace testing;

class OfflineAggregatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_agg_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes a client adapter of rank r on kModules and returns its path.
  std::string WriteClient(int index, std::int64_t r, std::mt19937_64& rng, DType dtype) {
    TensorMap t;
    for (const auto& m : kModules) {
      t[lora::LoraAName(m.name)] = FromDoubles(dtype, {r, m.d_in}, ToDoubles(Random(r, m.d_in, rng)));
      t[lora::LoraBName(m.name)] =
          FromDoubles(dtype, {m.d_out, r}, ToDoubles(Random(m.d_out, r, rng)));
    }
    const std::string path = dir_ + "/client" + std::to_string(index) + ".safetensors";
    EXPECT_TRUE(safetensors::Write(path, t).ok());
    files_.push_back(t);
    return path;
  }

  std::string dir_;
  std::vector<TensorMap> files_;
};

TEST_F(OfflineAggregatorTest, FedExGlobalPlusCorrectionIsExactInFp64) {
  std::mt19937_64 rng(1);
  OfflineOptions o;
  o.strategy = "fedex";
  o.out_dir = dir_ + "/out";
  o.fp64 = true;
  o.settings = {"lora.alpha=6"};
  const double weights[] = {3, 5, 9};
  for (int k = 0; k < 3; ++k) o.clients.push_back({WriteClient(k, 3, rng, DType::kF32), weights[k]});
  ASSERT_TRUE(RunOfflineAggregation(o).ok());
  const safetensors::File global = safetensors::Read(o.out_dir + "/global.safetensors").value();
  const safetensors::File corr = safetensors::Read(o.out_dir + "/correction.safetensors").value();
  const double s = 6.0 / 3;
  for (const auto& m : kModules) {
    Dense lhs = Zero(m.d_out, m.d_in), ideal = Zero(m.d_out, m.d_in);
    AddProduct(lhs, FromTensor(corr.tensors.at(m.name + ".U")), FromTensor(corr.tensors.at(m.name + ".V")));
    AddProduct(lhs, FromTensor(global.tensors.at(lora::LoraBName(m.name))),
               FromTensor(global.tensors.at(lora::LoraAName(m.name))), s);
    for (int k = 0; k < 3; ++k) {
      AddProduct(ideal, FromTensor(files_[k].at(lora::LoraBName(m.name))),
                 FromTensor(files_[k].at(lora::LoraAName(m.name))), s * weights[k] / 17);
    }
    EXPECT_LT(MaxAbsDiff(lhs, ideal), 1e-10) << m.name;
  }
  std::ifstream in(o.out_dir + "/summary.json");
  const nlohmann::json summary = nlohmann::json::parse(in);
  EXPECT_EQ(summary["strategy"], "fedex");
  EXPECT_NEAR(summary["clients"][1]["weight"].get<double>(), 5.0 / 17, 1e-15);
  EXPECT_EQ(summary["lora"]["scale"], 2.0);
}

TEST_F(OfflineAggregatorTest, FloraWritesTheStackedUpdateAsCorrectionAndAdapter) {
  std::mt19937_64 rng(2);
  OfflineOptions o;
  o.strategy = "flora";
  o.out_dir = dir_ + "/out";
  o.fp64 = true;
  o.settings = {"lora.alpha=4", "lora.rank=4", "strategy.weighting=uniform"};
  o.clients = {{WriteClient(0, 4, rng, DType::kF64), 1}, {WriteClient(1, 2, rng, DType::kF64), 1}};
  ASSERT_TRUE(RunOfflineAggregation(o).ok());
  const auto corr = safetensors::Read(o.out_dir + "/correction.safetensors").value();
  const auto& m = kModules[1];
  EXPECT_EQ(corr.tensors.at(m.name + ".U").shape[1], 6);  // Stacked rank 4 + 2.
  Dense got = Zero(m.d_out, m.d_in), ideal = Zero(m.d_out, m.d_in);
  AddProduct(got, FromTensor(corr.tensors.at(m.name + ".U")), FromTensor(corr.tensors.at(m.name + ".V")));
  for (int k = 0; k < 2; ++k) {
    AddProduct(ideal, FromTensor(files_[k].at(lora::LoraBName(m.name))),
               FromTensor(files_[k].at(lora::LoraAName(m.name))), 0.5 * 4.0 / 4);
  }
  EXPECT_LT(MaxAbsDiff(got, ideal), 1e-10);
}

TEST_F(OfflineAggregatorTest, FedExPeftOutIsExactOnThePristineBase) {
  std::mt19937_64 rng(5);
  OfflineOptions o;
  o.strategy = "fedex";
  o.out_dir = dir_ + "/out";
  o.peft_out = dir_ + "/peft";
  o.fp64 = true;
  o.settings = {"lora.alpha=6", "export.dtype=f64", "export.base_model_name_or_path=org/base"};
  const double weights[] = {3, 5, 9};
  for (int k = 0; k < 3; ++k) {
    o.clients.push_back({WriteClient(k, 3, rng, DType::kF32), weights[k]});
  }
  const Status s = RunOfflineAggregation(o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const lora::PeftAdapter peft = lora::ImportPeft(o.peft_out).value();
  EXPECT_EQ(peft.base_model_name_or_path, "org/base");
  for (const auto& m : kModules) {
    // PEFT on the pristine base adds s' B' A' = U V + s B_g A_g = sum_k p_k s B_k A_k.
    const lora::PeftFactors& f = peft.modules.at(m.name);
    EXPECT_EQ(peft.ScaleOf(m.name), 1.0);
    EXPECT_GT(f.a.shape[0], 3) << "the correction's rank is folded in";
    Dense got = Zero(m.d_out, m.d_in), ideal = Zero(m.d_out, m.d_in);
    AddProduct(got, FromTensor(f.b), FromTensor(f.a), peft.ScaleOf(m.name));
    for (int k = 0; k < 3; ++k) {
      AddProduct(ideal, FromTensor(files_[k].at(lora::LoraBName(m.name))),
                 FromTensor(files_[k].at(lora::LoraAName(m.name))), 2.0 * weights[k] / 17);
    }
    EXPECT_LT(MaxAbsDiff(got, ideal), 1e-10) << m.name;
  }
}

TEST_F(OfflineAggregatorTest, PeftAdapterDirectoriesAreClientsAtTheirOwnScale) {
  // Two PEFT clients at different scales (16/4 = 4 and 2/2 = 1); FLoRA's merged update must be
  // the mean of what each one's PEFT model adds, s_k B_k A_k.
  std::mt19937_64 rng(6);
  const double scales[] = {4.0, 1.0};
  const wire::LoraSpec specs[] = {{.rank = 4, .alpha = 16, .targets = {"q_proj", "up_proj"}},
                                  {.rank = 2, .alpha = 2, .targets = {"q_proj", "up_proj"}}};
  OfflineOptions o;
  o.strategy = "flora";
  o.out_dir = dir_ + "/out";
  o.peft_out = dir_ + "/peft";
  o.fp64 = true;
  o.settings = {"strategy.weighting=uniform", "export.dtype=f64"};
  for (int k = 0; k < 2; ++k) {
    WriteClient(k, specs[k].rank, rng, DType::kF64);
    const std::string peft_dir = dir_ + "/client" + std::to_string(k) + "_peft";
    const lora::PeftAdapter client =
        lora::PeftFromAdapter(files_[k], specs[k], "", DType::kF64).value();
    ASSERT_TRUE(lora::ExportPeft(peft_dir, client, {.dtype = DType::kF64}).ok());
    o.clients.push_back({peft_dir, 1});
  }
  const Status s = RunOfflineAggregation(o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const lora::PeftAdapter peft = lora::ImportPeft(o.peft_out).value();
  for (const auto& m : kModules) {
    const lora::PeftFactors& f = peft.modules.at(m.name);
    EXPECT_EQ(f.a.shape[0], 6) << "stacked ranks 4 + 2";
    Dense got = Zero(m.d_out, m.d_in), ideal = Zero(m.d_out, m.d_in);
    AddProduct(got, FromTensor(f.b), FromTensor(f.a), peft.ScaleOf(m.name));
    for (int k = 0; k < 2; ++k) {
      AddProduct(ideal, FromTensor(files_[k].at(lora::LoraBName(m.name))),
                 FromTensor(files_[k].at(lora::LoraAName(m.name))), 0.5 * scales[k]);
    }
    EXPECT_LT(MaxAbsDiff(got, ideal), 1e-10) << m.name;
  }
  // A directory that is not a PEFT adapter is named with the file it lacks.
  ASSERT_TRUE(std::filesystem::create_directories(dir_ + "/empty"));
  o.clients = {{dir_ + "/empty", 1}};
  const Status missing = RunOfflineAggregation(o);
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("adapter_config.json"), std::string::npos) << missing.message();
}

TEST_F(OfflineAggregatorTest, FsLoraNeedsTheGlobalAndTheSketches) {
  std::mt19937_64 rng(3);
  OfflineOptions o;
  o.strategy = "fslora";
  o.out_dir = dir_ + "/out";
  o.clients = {{WriteClient(0, 2, rng, DType::kF32), 1}};
  const Status no_global = RunOfflineAggregation(o);
  EXPECT_NE(no_global.message().find("--global"), std::string::npos) << no_global.message();
  o.global_path = WriteClient(9, 4, rng, DType::kF32);
  const Status no_sketch = RunOfflineAggregation(o);
  EXPECT_NE(no_sketch.message().find("sketch"), std::string::npos) << no_sketch.message();
  o.settings = {"strategy.fslora.sketch.0=[1, 3]"};
  ASSERT_TRUE(RunOfflineAggregation(o).ok());
  const auto global = safetensors::Read(o.out_dir + "/global.safetensors").value();
  EXPECT_EQ(global.tensors.at(lora::LoraAName(kModules[0].name)).shape[0], 4);
}

TEST_F(OfflineAggregatorTest, BadInputsAreErrorsThatNameTheFile) {
  std::mt19937_64 rng(4);
  OfflineOptions o;
  o.strategy = "fedavg";
  o.out_dir = dir_ + "/out";
  o.clients = {{dir_ + "/missing.safetensors", 1}};
  EXPECT_EQ(RunOfflineAggregation(o).code(), StatusCode::kNotFound);
  // Two files disagreeing on d_in.
  const std::string a = WriteClient(0, 2, rng, DType::kF32);
  TensorMap other = files_[0];
  other[lora::LoraAName(kModules[0].name)] = Zeros(DType::kF32, {2, 7});
  ASSERT_TRUE(safetensors::Write(dir_ + "/other.safetensors", other).ok());
  o.clients = {{a, 1}, {dir_ + "/other.safetensors", 1}};
  const Status s = RunOfflineAggregation(o);
  EXPECT_NE(s.message().find("other.safetensors"), std::string::npos) << s.message();
  o.clients = {{a, 1}};
  o.settings = {"strategy.lorafair.lamda=1"};  // Typo: the unknown key is named.
  o.strategy = "lorafair";
  EXPECT_NE(RunOfflineAggregation(o).message().find("lamda"), std::string::npos);
  EXPECT_FALSE(ParseClientArgument("x.safetensors:-2").ok());
  EXPECT_EQ(ParseClientArgument("x.safetensors:12").value().weight, 12.0);
}

}  // namespace
}  // namespace fedlora::server
