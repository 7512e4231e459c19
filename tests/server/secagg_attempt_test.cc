// The SecAgg+ protocol between the coordinator's SecAggAttempt and clients' ClientProtocol,
// message by message without sockets: the unmasked sum equals the plain sum of the quantised
// inputs bit for bit, for N = 3, 10, 50 and clients dropping after each stage (up to the most the
// threshold tolerates), and a misbehaving member is refused without stopping the others.
#include "server/secagg_attempt.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "common/secagg/client_protocol.h"
#include "common/secagg/protocol.h"
#include "common/secagg/quantize.h"

namespace fedlora::server {
namespace {

using secagg::ClientProtocol;

constexpr std::uint64_t kRound = 7;
constexpr std::uint32_t kAttempt = 2;

// Two slots of 3x5 and 2x4 values: 25 words with the weights.
wire::SecAggParams Params(std::uint32_t modulus_bits = 32) {
  wire::SecAggParams p;
  p.clip = 1.0;
  p.levels_bits = 16;
  p.modulus_bits = modulus_bits;
  p.layout = {{"m.lora_A.weight", {3, 5}}, {"m.lora_B.weight", {2, 4}}};
  return p;
}

// Which stage each client stops answering at: it sends nothing from that stage on.
enum class DropAt { kNever, kKeys, kShares, kInput, kReveal };

std::string Name(std::size_t i) { return "client-" + std::to_string(100 + i); }

class Federation {
 public:
  Federation(std::size_t n, std::map<std::string, DropAt> drops, SecAggSettings settings = {},
             std::uint32_t modulus_bits = 32)
      : drops_(std::move(drops)),
        modulus_bits_(modulus_bits),
        modulus_(secagg::Modulus::Bits(modulus_bits).value()) {
    std::set<std::string, std::less<>> members;
    std::mt19937_64 rng(n);
    const std::uint64_t length = secagg::SecureVectorLength(Params()).value();
    for (std::size_t i = 0; i < n; ++i) {
      members.insert(Name(i));
      std::vector<std::uint32_t> input(length);
      for (auto& w : input) w = static_cast<std::uint32_t>(rng() & 0xFFFF);  // q = 16 levels.
      inputs_[Name(i)] = input;
      clients_.emplace(Name(i), ClientProtocol(kRound, kAttempt, modulus_));
    }
    attempt_.emplace(kRound, kAttempt, Params(modulus_bits), settings, members, 2, now_,
                     now_ + kInputTime);
  }

  DropAt drop(const std::string& id) const {
    const auto it = drops_.find(id);
    return it == drops_.end() ? DropAt::kNever : it->second;
  }
  bool Answers(const std::string& id, DropAt stage) const {
    const DropAt d = drop(id);
    return d == DropAt::kNever || d > stage;
  }

  // Runs every stage; each ends at its deadline when somebody stays silent.
  void Run() {
    for (auto& [id, c] : clients_) {
      if (Answers(id, DropAt::kKeys)) ASSERT_TRUE(attempt_->OnKeys(id, c.Keys()).ok());
    }
    Deliver(Step());
    for (auto& [id, shares] : shares_out_) {
      if (Answers(id, DropAt::kShares)) ASSERT_TRUE(attempt_->OnShares(id, shares).ok()) << id;
    }
    Deliver(Step());
    for (auto& [id, c] : clients_) {
      if (!routed_.contains(id) || !Answers(id, DropAt::kInput)) continue;
      Result<std::vector<std::uint32_t>> masked = c.Mask(inputs_.at(id));
      ASSERT_TRUE(masked.ok()) << masked.status().ToString();
      ASSERT_TRUE(attempt_->OnMaskedInput(id, *masked, 0).ok()) << id;
      survivors_.insert(id);
    }
    Deliver(Step());
    for (auto& [id, reveal] : reveals_out_) {
      if (Answers(id, DropAt::kReveal)) ASSERT_TRUE(attempt_->OnReveal(id, reveal).ok()) << id;
    }
    Step();
  }

  // Steps at once, or past the deadline when the stage waits for silent members.
  std::vector<SecAggAttempt::Outgoing> Step() {
    std::vector<SecAggAttempt::Outgoing> out = attempt_->Step(now_);
    if (out.empty() && attempt_->active()) {
      now_ = attempt_->deadline();
      out = attempt_->Step(now_);
    }
    return out;
  }

  void Deliver(std::vector<SecAggAttempt::Outgoing> messages) {
    for (auto& m : messages) {
      ClientProtocol& c = clients_.at(m.to);
      if (const auto* roster = std::get_if<wire::SecAggRoster>(&m.stage)) {
        Result<wire::SecAggShares> shares = c.OnRoster(*roster);
        ASSERT_TRUE(shares.ok()) << shares.status().ToString();
        shares_out_[m.to] = *shares;
      } else if (const auto* routed = std::get_if<wire::SecAggShares>(&m.stage)) {
        ASSERT_TRUE(c.OnShares(*routed).ok());
        routed_.insert(m.to);
      } else if (const auto* unmask = std::get_if<wire::SecAggUnmask>(&m.stage)) {
        Result<wire::SecAggReveal> reveal = c.OnUnmask(*unmask);
        ASSERT_TRUE(reveal.ok()) << reveal.status().ToString();
        reveals_out_[m.to] = *reveal;
      }
    }
  }

  // The plain sum of the survivors' quantised inputs, decoded as the attempt decodes its sum.
  secagg::SecureSum PlainSum() const {
    std::vector<std::uint32_t> sum(inputs_.begin()->second.size(), 0);
    for (const std::string& id : survivors_) {
      EXPECT_TRUE(secagg::AddInto(sum, inputs_.at(id), modulus_).ok());
    }
    return secagg::DecodeSecureSum(Params(modulus_bits_), sum, survivors_.size()).value();
  }

  static constexpr std::chrono::seconds kInputTime{100};
  std::map<std::string, DropAt> drops_;
  std::uint32_t modulus_bits_;
  secagg::Modulus modulus_;
  Clock::TimePoint now_{};
  std::map<std::string, std::vector<std::uint32_t>> inputs_;
  std::map<std::string, ClientProtocol> clients_;
  std::optional<SecAggAttempt> attempt_;
  std::map<std::string, wire::SecAggShares> shares_out_;
  std::set<std::string> routed_;
  std::set<std::string> survivors_;
  std::map<std::string, wire::SecAggReveal> reveals_out_;
};

void ExpectBitExact(const secagg::SecureSum& got, const secagg::SecureSum& want) {
  ASSERT_EQ(got.survivors, want.survivors);
  for (const auto& [name, t] : want.weighted) {
    EXPECT_EQ(got.weighted.at(name).data, t.data) << name;  // Bit for bit.
    EXPECT_EQ(got.weights.at(name), want.weights.at(name)) << name;
  }
}

struct Case {
  std::size_t n;
  std::map<std::size_t, DropAt> drops;  // Client index -> where it stops.
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "N=" << c.n << " with " << c.drops.size() << " dropout(s)";
}

class SecAggExactnessTest : public ::testing::TestWithParam<Case> {};

TEST_P(SecAggExactnessTest, UnmaskedSumEqualsThePlainSumOfTheSurvivorsQuantisedInputs) {
  std::map<std::string, DropAt> drops;
  for (const auto& [i, d] : GetParam().drops) drops[Name(i)] = d;
  Federation f(GetParam().n, drops);
  f.Run();
  ASSERT_EQ(f.attempt_->stage(), SecAggStage::kDone) << f.attempt_->failure();
  ExpectBitExact(f.attempt_->sum(), f.PlainSum());
  EXPECT_EQ(f.attempt_->survivors().size(), f.survivors_.size());
}

// N = 3: complete graph, threshold 2 of 3 holders: one client may drop at any stage.
// N = 10: complete, threshold 6 of 10: four may drop. N = 50: 18 neighbours, threshold 10 of 19.
INSTANTIATE_TEST_SUITE_P(
    DropoutsAfterEachStage, SecAggExactnessTest,
    ::testing::Values(
        Case{3, {}}, Case{10, {}}, Case{50, {}}, Case{3, {{0, DropAt::kKeys}}},
        Case{3, {{1, DropAt::kShares}}}, Case{3, {{2, DropAt::kInput}}},
        Case{3, {{0, DropAt::kReveal}}},
        Case{10,
             {{0, DropAt::kKeys}, {1, DropAt::kShares}, {2, DropAt::kInput}, {3, DropAt::kReveal}}},
        // The most the threshold tolerates: 4 of 10 send no input.
        Case{10,
             {{1, DropAt::kInput}, {4, DropAt::kInput}, {6, DropAt::kInput}, {9, DropAt::kInput}}},
        // 4 of 10 survivors withhold their reveal: 6 remain, the threshold.
        Case{10,
             {{0, DropAt::kReveal},
              {2, DropAt::kReveal},
              {5, DropAt::kReveal},
              {8, DropAt::kReveal}}},
        Case{50,
             {{3, DropAt::kKeys},
              {10, DropAt::kShares},
              {11, DropAt::kInput},
              {12, DropAt::kInput},
              {30, DropAt::kInput},
              {40, DropAt::kReveal},
              {41, DropAt::kReveal}}}));

TEST(SecAggAttemptTest, OneDropoutMoreThanTheThresholdToleratesFailsTheAttempt) {
  std::map<std::string, DropAt> drops;
  for (std::size_t i : {1, 4, 6, 8, 9}) drops[Name(i)] = DropAt::kInput;  // 5 of 10: t = 6 left.
  Federation f(10, drops);
  f.Run();
  EXPECT_EQ(f.attempt_->stage(), SecAggStage::kFailed);
  EXPECT_NE(f.attempt_->failure().find("5 of 10 clients sent masked inputs"), std::string::npos)
      << f.attempt_->failure();
}

TEST(SecAggAttemptTest, TooFewRevealsFailTheAttemptInsteadOfUnmaskingWrongly) {
  std::map<std::string, DropAt> drops;
  for (std::size_t i : {0, 1, 2, 3, 4}) drops[Name(i)] = DropAt::kReveal;  // 5 reveals, t = 6.
  Federation f(10, drops);
  f.Run();
  EXPECT_EQ(f.attempt_->stage(), SecAggStage::kFailed);
  EXPECT_NE(f.attempt_->failure().find("needed"), std::string::npos) << f.attempt_->failure();
}

TEST(SecAggAttemptTest, AThresholdAboveTheClientsThatSentKeysFails) {
  Federation f(3, {{Name(0), DropAt::kKeys}}, SecAggSettings{.threshold = 3});
  f.Run();
  EXPECT_EQ(f.attempt_->stage(), SecAggStage::kFailed);
  EXPECT_NE(f.attempt_->failure().find("threshold 3 is above the 2 clients"), std::string::npos)
      << f.attempt_->failure();
}

// Malformed messages: refused with SECAGG_MISMATCH, the sender excluded, the others unmasked.
class SecAggMisbehaviourTest : public ::testing::Test {
 protected:
  static std::uint32_t Code(const Status& s) { return s.detail(); }
  static constexpr auto kMismatch = static_cast<std::uint32_t>(wire::ErrorCode::kSecAggMismatch);
};

TEST_F(SecAggMisbehaviourTest, AShareOfTheWrongSizeExcludesItsSenderAndTheRestUnmask) {
  Federation f(4, {});
  for (auto& [id, c] : f.clients_) ASSERT_TRUE(f.attempt_->OnKeys(id, c.Keys()).ok());
  f.Deliver(f.Step());
  wire::SecAggShares bad = f.shares_out_.at(Name(0));
  bad.shares[0].sealed.pop_back();
  const Status refused = f.attempt_->OnShares(Name(0), bad);
  EXPECT_EQ(Code(refused), kMismatch);
  EXPECT_NE(refused.message().find("bytes, not"), std::string::npos) << refused.message();
  // The others go on; the bad sender neither masks nor reveals.
  f.drops_[Name(0)] = DropAt::kShares;
  for (auto& [id, shares] : f.shares_out_) {
    if (id != Name(0)) ASSERT_TRUE(f.attempt_->OnShares(id, shares).ok());
  }
  f.Deliver(f.Step());
  EXPECT_FALSE(f.routed_.contains(Name(0)));
  for (const std::string& id : f.routed_) {
    ASSERT_TRUE(
        f.attempt_->OnMaskedInput(id, f.clients_.at(id).Mask(f.inputs_.at(id)).value(), 0).ok());
    f.survivors_.insert(id);
  }
  f.Deliver(f.Step());
  for (auto& [id, reveal] : f.reveals_out_) ASSERT_TRUE(f.attempt_->OnReveal(id, reveal).ok());
  f.Step();
  ASSERT_EQ(f.attempt_->stage(), SecAggStage::kDone) << f.attempt_->failure();
  ExpectBitExact(f.attempt_->sum(), f.PlainSum());
}

TEST_F(SecAggMisbehaviourTest, VectorsOfAnotherLengthOrBeyondTheModulusAreRefused) {
  Federation f(3, {}, {}, /*modulus_bits=*/31);
  for (auto& [id, c] : f.clients_) ASSERT_TRUE(f.attempt_->OnKeys(id, c.Keys()).ok());
  f.Deliver(f.Step());
  for (auto& [id, shares] : f.shares_out_) ASSERT_TRUE(f.attempt_->OnShares(id, shares).ok());
  f.Deliver(f.Step());
  const std::vector<std::uint32_t> short_vector(24, 0);
  const Status too_short = f.attempt_->OnMaskedInput(Name(0), short_vector, 0);
  EXPECT_EQ(Code(too_short), kMismatch);
  EXPECT_NE(too_short.message().find("24 words; the layout has 25"), std::string::npos)
      << too_short.message();
  std::vector<std::uint32_t> beyond(25, 0);
  beyond[7] = 0x80000000u;  // 2^31: not below the modulus.
  const Status wrapped = f.attempt_->OnMaskedInput(Name(1), beyond, 0);
  EXPECT_EQ(Code(wrapped), kMismatch);
  EXPECT_NE(wrapped.message().find("word 7"), std::string::npos) << wrapped.message();
  // Both are out of the attempt; the third's input alone is not enough to unmask.
  ASSERT_TRUE(
      f.attempt_
          ->OnMaskedInput(Name(2), f.clients_.at(Name(2)).Mask(f.inputs_.at(Name(2))).value(), 0)
          .ok());
  f.Step();
  EXPECT_EQ(f.attempt_->stage(), SecAggStage::kFailed);
}

TEST_F(SecAggMisbehaviourTest, KeysOutsideTheirStageOrFromStrangersAreRefused) {
  Federation f(3, {});
  for (auto& [id, c] : f.clients_) ASSERT_TRUE(f.attempt_->OnKeys(id, c.Keys()).ok());
  EXPECT_EQ(Code(f.attempt_->OnKeys("stranger", f.clients_.at(Name(0)).Keys())), kMismatch);
  EXPECT_EQ(Code(f.attempt_->OnKeys(Name(1), f.clients_.at(Name(1)).Keys())), kMismatch);
}

TEST_F(SecAggMisbehaviourTest, ABadRevealedShareAmongSparesIsLeftOutAndTheSumStaysExact) {
  Federation f(5, {});  // Complete graph: 5 holders, threshold 3, so spares exist.
  for (auto& [id, c] : f.clients_) ASSERT_TRUE(f.attempt_->OnKeys(id, c.Keys()).ok());
  f.Deliver(f.Step());
  for (auto& [id, shares] : f.shares_out_) ASSERT_TRUE(f.attempt_->OnShares(id, shares).ok());
  f.Deliver(f.Step());
  for (auto& [id, c] : f.clients_) {
    ASSERT_TRUE(f.attempt_->OnMaskedInput(id, c.Mask(f.inputs_.at(id)).value(), 0).ok());
    f.survivors_.insert(id);
  }
  f.Deliver(f.Step());
  for (auto& [id, reveal] : f.reveals_out_) {
    if (id == Name(2)) reveal.shares[0].y[32] ^= 1;  // One tampered share.
    ASSERT_TRUE(f.attempt_->OnReveal(id, reveal).ok());
  }
  f.Step();
  ASSERT_EQ(f.attempt_->stage(), SecAggStage::kDone) << f.attempt_->failure();
  ExpectBitExact(f.attempt_->sum(), f.PlainSum());
}

}  // namespace
}  // namespace fedlora::server
