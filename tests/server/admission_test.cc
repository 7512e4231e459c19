// The coordinator's pure checks of what peers send (server/admission.h): no sockets, no
// coordinator, only values in and refusals out.
#include "server/admission.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/wire/codec.h"  // wire::DecodeErrorCode

namespace fedlora::server {
namespace {

using wire::ErrorCode;

const std::string kDigest(64, 'd');
const std::vector<wire::ModuleInfo> kModules = {{"model.layers.0.self_attn.q_proj", 6, 4},
                                                {"model.layers.0.self_attn.v_proj", 3, 4}};

CoordinatorConfig Config() {
  CoordinatorConfig config;
  config.base_model_sha256 = kDigest;
  config.transport.max_message_bytes = 64 << 10;
  config.lora = {.rank = 2, .alpha = 4, .targets = {"q_proj", "v_proj"}};
  return config;
}

wire::Hello Hello(std::string name = "alice", std::string digest = kDigest,
                  std::vector<wire::ModuleInfo> modules = kModules) {
  wire::Hello hello;
  hello.client_name = std::move(name);
  hello.software_version = "test";
  hello.base_model_sha256 = std::move(digest);
  hello.capabilities = wire::Capabilities{"cpu", 1 << 20, 0, 100, 1.0};
  hello.modules = std::move(modules);
  return hello;
}

// A task that asks for a [2, 4] f32 "a" (rank 2, shrinkable along dimension 0) and a [3, 2] f32
// "b", after 5 local steps of batch 8.
ClientTask Task() {
  ClientTask task;
  task.client_id = "alice";
  task.train.local_steps = 5;
  task.train.batch_size = 8;
  task.expected_upload["a"] = {TensorSpec{DType::kF32, {2, 4}}, 0};
  task.expected_upload["b"] = {TensorSpec{DType::kF32, {3, 2}}, -1};
  return task;
}

wire::Update Upload() {
  wire::Update update;
  update.round = 1;
  update.num_samples = 40;
  update.num_examples = 100;
  update.metrics = {{"train_loss", 1.5}};
  update.tensors["a"] = Zeros(DType::kF32, {2, 4});
  update.tensors["b"] = Zeros(DType::kF32, {3, 2});
  return update;
}

wire::EvalResult Evaluation() {
  wire::EvalResult result;
  result.round = 1;
  result.loss = 2.0;
  result.num_tokens = 100;
  result.num_examples = 10;
  result.metrics = {{"accuracy", 0.5}, {"class_0_examples", 6}, {"class_1_examples", 4}};
  return result;
}

// The refusal's error code, or kUnspecified for OK.
ErrorCode CodeOf(const Status& s) {
  if (s.ok()) return ErrorCode::kUnspecified;
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  return wire::DecodeErrorCode(s);
}

// ---- Hello ---------------------------------------------------------------------------------

TEST(AdmissionTest, AWellFormedHelloIsAdmitted) {
  EXPECT_TRUE(CheckHelloName(Hello()).ok());
  const Status s = CheckHelloModel(Hello(), Config(), std::nullopt);
  EXPECT_TRUE(s.ok()) << s.ToString();
  const Result<wire::AdapterPlan> plan = PlanForHello(Hello(), Config());
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
}

TEST(AdmissionTest, ANameOutsideTheBoringAlphabetIsAnInvalidField) {
  EXPECT_EQ(CodeOf(CheckHelloName(Hello("al ice"))), ErrorCode::kInvalidField);
  EXPECT_EQ(CodeOf(CheckHelloName(Hello(".hidden"))), ErrorCode::kInvalidField);
  EXPECT_EQ(CodeOf(CheckHelloName(Hello(""))), ErrorCode::kInvalidField);
  EXPECT_EQ(CodeOf(CheckHelloName(Hello(std::string(65, 'a')))), ErrorCode::kInvalidField);
}

TEST(AdmissionTest, ADigestOtherThanTheConfiguredOneIsABaseModelMismatch) {
  const Status s = CheckHelloModel(Hello("alice", std::string(64, 'e')), Config(), std::nullopt);
  EXPECT_EQ(CodeOf(s), ErrorCode::kBaseModelMismatch);
  EXPECT_NE(s.message().find(kDigest), std::string::npos) << s.message();
}

TEST(AdmissionTest, WithoutAConfiguredDigestThePinnedLayoutsDigestIsRequired) {
  CoordinatorConfig config = Config();
  config.base_model_sha256.clear();
  const ModelLayout pinned{std::string(64, 'e'), kModules};
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello(), config, pinned)), ErrorCode::kBaseModelMismatch);
  EXPECT_TRUE(CheckHelloModel(Hello("alice", std::string(64, 'e')), config, pinned).ok());
  // Before any layout is pinned, the first Hello's digest defines the federation's.
  EXPECT_TRUE(CheckHelloModel(Hello(), config, std::nullopt).ok());
}

TEST(AdmissionTest, ADigestThatIsNotLowercaseHexIsAnInvalidField) {
  CoordinatorConfig config = Config();
  config.base_model_sha256.clear();
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", std::string(64, 'D')), config, std::nullopt)),
            ErrorCode::kInvalidField);
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", "abc"), config, std::nullopt)),
            ErrorCode::kInvalidField);
  // An empty digest is nobody's model.
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", ""), config, std::nullopt)),
            ErrorCode::kBaseModelMismatch);
}

TEST(AdmissionTest, ADuplicateModuleIsRefusedWithItsName) {
  std::vector<wire::ModuleInfo> modules = kModules;
  modules.push_back(kModules.front());
  const Status s = CheckHelloModel(Hello("alice", kDigest, modules), Config(), std::nullopt);
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidField);
  EXPECT_NE(s.message().find("model.layers.0.self_attn.q_proj"), std::string::npos) << s.message();
}

TEST(AdmissionTest, AModuleNameWithControlCharactersIsRefusedPrintably) {
  std::vector<wire::ModuleInfo> modules = kModules;
  modules.push_back({"evil\n.q_proj", 4, 4});
  const Status s = CheckHelloModel(Hello("alice", kDigest, modules), Config(), std::nullopt);
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidField);
  EXPECT_NE(s.message().find("evil\\x0a.q_proj"), std::string::npos) << s.message();
}

TEST(AdmissionTest, ModulesWithoutDimensionsOrWithoutAnyAreInvalidFields) {
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", kDigest, {}), Config(), std::nullopt)),
            ErrorCode::kInvalidField);
  std::vector<wire::ModuleInfo> modules = kModules;
  modules[1].d_in = 0;
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", kDigest, modules), Config(), std::nullopt)),
            ErrorCode::kInvalidField);
  modules[1].d_in = kMaxModuleDim + 1;
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", kDigest, modules), Config(), std::nullopt)),
            ErrorCode::kInvalidField);
}

TEST(AdmissionTest, AModelWithoutTheConfiguredTargetsIsABaseModelMismatch) {
  const std::vector<wire::ModuleInfo> modules = {{"model.layers.0.mlp.up_proj", 6, 4}};
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello("alice", kDigest, modules), Config(), std::nullopt)),
            ErrorCode::kBaseModelMismatch);
}

TEST(AdmissionTest, AnAdapterLargerThanTheMessageLimitIsAdmittedBecauseItTravelsInChunks) {
  // Rank 2 on q (6 x 4) and v (3 x 4): 4 bytes x 2 x (10 + 7) = 136 bytes, over a 64-byte limit.
  CoordinatorConfig config = Config();
  config.transport.max_message_bytes = 64;
  EXPECT_TRUE(CheckHelloModel(Hello(), config, std::nullopt).ok());
}

TEST(AdmissionTest, AModuleLayoutUnlikeThePinnedOneIsABaseModelMismatch) {
  std::vector<wire::ModuleInfo> other = kModules;
  other[0].d_out = 8;
  const ModelLayout pinned{kDigest, other};
  EXPECT_EQ(CodeOf(CheckHelloModel(Hello(), Config(), pinned)), ErrorCode::kBaseModelMismatch);
  EXPECT_TRUE(CheckHelloModel(Hello(), Config(), ModelLayout{kDigest, kModules}).ok());
}

// ---- Update --------------------------------------------------------------------------------

TEST(AdmissionTest, AnUpdateWithExactlyTheTasksTensorsIsAccepted) {
  const Status s = ValidateUpload(Upload(), Task(), 1000);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(AdmissionTest, AnUpdateWithoutATensorIsRefusedWithItsName) {
  wire::Update update = Upload();
  update.tensors.erase("b");
  const Status s = ValidateUpload(update, Task(), 1000);
  EXPECT_EQ(CodeOf(s), ErrorCode::kTensorShapeMismatch);
  EXPECT_NE(s.message().find("missing tensor 'b'"), std::string::npos) << s.message();
}

TEST(AdmissionTest, AnUpdateWithAnUnexpectedTensorIsRefusedWithItsName) {
  wire::Update update = Upload();
  update.tensors["c"] = Zeros(DType::kF32, {1});
  const Status s = ValidateUpload(update, Task(), 1000);
  EXPECT_EQ(CodeOf(s), ErrorCode::kTensorShapeMismatch);
  EXPECT_NE(s.message().find("unexpected tensor 'c'"), std::string::npos) << s.message();
}

TEST(AdmissionTest, ATensorOfAnotherDtypeIsADtypeMismatch) {
  wire::Update update = Upload();
  update.tensors["b"] = Zeros(DType::kBF16, {3, 2});
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kTensorDtypeMismatch);
}

TEST(AdmissionTest, OnlyTheShrinkableDimensionMayBeSmaller) {
  wire::Update update = Upload();
  update.tensors["a"] = Zeros(DType::kF32, {1, 4});  // A pruned rank.
  EXPECT_TRUE(ValidateUpload(update, Task(), 1000).ok());
  update.tensors["a"] = Zeros(DType::kF32, {3, 4});  // Larger than asked.
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kTensorShapeMismatch);
  update = Upload();
  update.tensors["b"] = Zeros(DType::kF32, {2, 2});  // Not shrinkable.
  const Status s = ValidateUpload(update, Task(), 1000);
  EXPECT_EQ(CodeOf(s), ErrorCode::kTensorShapeMismatch);
  EXPECT_NE(s.message().find("tensor 'b' has shape [2, 2], expected [3, 2]"), std::string::npos)
      << s.message();
}

TEST(AdmissionTest, ANonFiniteValueIsRefused) {
  wire::Update update = Upload();
  const std::vector<double> values = {0, 0, 0, 0, 0, std::nan("")};
  update.tensors["b"] = FromDoubles(DType::kF32, {3, 2}, values);
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kNonFiniteTensor);
}

TEST(AdmissionTest, MoreSamplesThanTheTaskCouldProcessAreAnInvalidField) {
  wire::Update update = Upload();
  update.num_samples = 41;  // 5 steps x batch 8 = 40.
  const Status s = ValidateUpload(update, Task(), 1000);
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidField);
  EXPECT_NE(s.message().find("(40)"), std::string::npos) << s.message();
  update.num_samples = 0;
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kInvalidField);
}

TEST(AdmissionTest, EpochsAreCountedOverNoMoreThanTheCappedExamples) {
  ClientTask task = Task();
  task.train.local_epochs = 2;
  wire::Update update = Upload();
  update.num_examples = 1'000'000;  // Declared; weighted as at most max_examples (20).
  update.num_samples = 2 * 24;      // 2 epochs over 20 examples in whole batches of 8.
  EXPECT_TRUE(ValidateUpload(update, task, 20).ok());
  update.num_samples = 2 * 24 + 1;
  EXPECT_EQ(CodeOf(ValidateUpload(update, task, 20)), ErrorCode::kInvalidField);
}

TEST(AdmissionTest, AMetricWithAnOddNameOrValueIsRefused) {
  wire::Update update = Upload();
  update.metrics["bad name"] = 1;
  const Status s = ValidateUpload(update, Task(), 1000);
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidField);
  EXPECT_NE(s.message().find("'bad name'"), std::string::npos) << s.message();
  update = Upload();
  update.metrics["train_loss"] = std::numeric_limits<double>::infinity();
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kInvalidField);
  update = Upload();
  for (std::size_t i = 0; i < kMaxUpdateMetrics; ++i) update.metrics["m" + std::to_string(i)] = 0;
  EXPECT_EQ(CodeOf(ValidateUpload(update, Task(), 1000)), ErrorCode::kInvalidField);
}

// ---- EvalResult ----------------------------------------------------------------------------

TEST(AdmissionTest, AnEvaluationWithSaneValuesIsAccepted) {
  EXPECT_TRUE(CheckEvalResult(Evaluation()).ok());
}

TEST(AdmissionTest, AnEvaluationLossMustBeFiniteOverSomeTokens) {
  wire::EvalResult result = Evaluation();
  result.loss = std::nan("");
  EXPECT_EQ(CodeOf(CheckEvalResult(result)), ErrorCode::kInvalidField);
  result = Evaluation();
  result.loss = -1;
  EXPECT_EQ(CodeOf(CheckEvalResult(result)), ErrorCode::kInvalidField);
  result = Evaluation();
  result.num_tokens = 0;
  EXPECT_EQ(CodeOf(CheckEvalResult(result)), ErrorCode::kInvalidField);
}

TEST(AdmissionTest, SharesAndClassCountsMustLieInTheirRanges) {
  wire::EvalResult result = Evaluation();
  result.metrics["accuracy"] = 1.5;
  EXPECT_EQ(CodeOf(CheckEvalResult(result)), ErrorCode::kInvalidField);
  result = Evaluation();
  result.metrics["exact_match"] = -0.1;
  EXPECT_EQ(CodeOf(CheckEvalResult(result)), ErrorCode::kInvalidField);
  result = Evaluation();
  result.metrics["class_1_examples"] = 11;  // More than the 10 examples evaluated.
  const Status s = CheckEvalResult(result);
  EXPECT_EQ(CodeOf(s), ErrorCode::kInvalidField);
  EXPECT_NE(s.message().find("class_1_examples"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace fedlora::server
