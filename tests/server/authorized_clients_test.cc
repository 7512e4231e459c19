#include "server/authorized_clients.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "common/fs.h"

namespace fedlora::server {
namespace {

using crypto::CurvePublicKey;

CurvePublicKey NewKey() { return crypto::GenerateCurveKeyPair().public_key; }

class AuthorizedClientsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_authz_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = dir_ + "/authorized_clients";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
};

TEST(AuthorizedClientsParseTest, ReadsNamesAndKeysSkippingCommentsAndBlankLines) {
  const CurvePublicKey a = NewKey(), b = NewKey();
  const std::string text = "# enrolled by ops\n\n  alice   " + a.Z85() + "\n\tbob " + b.Z85() +
                           "   # laptop in room 4\n   # indented comment\n";
  Result<AuthorizedClients> parsed = AuthorizedClients::Parse(text, "clients.txt");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ(*parsed->KeyOf("alice"), a);
  EXPECT_EQ(*parsed->KeyOf("bob"), b);
  EXPECT_EQ(parsed->KeyOf("carol"), nullptr);
  EXPECT_EQ(parsed->NamesOf(b), std::vector<std::string>{"bob"});
  EXPECT_TRUE(parsed->Allows(a));
  EXPECT_FALSE(parsed->Allows(NewKey()));
  EXPECT_EQ(parsed->entries()[1].line, 4);
}

TEST(AuthorizedClientsParseTest, OneKeyMayBeEnrolledUnderSeveralNames) {
  const CurvePublicKey shard = NewKey();
  Result<AuthorizedClients> parsed = AuthorizedClients::Parse(
      "client-02 " + shard.Z85() + "\nclient-00 " + shard.Z85() + "\n", "x");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->NamesOf(shard), (std::vector<std::string>{"client-00", "client-02"}));
}

TEST(AuthorizedClientsParseTest, DuplicateNamesAndMalformedLinesAreErrorsNamingTheLine) {
  const std::string k = NewKey().Z85();
  const struct {
    std::string text;
    std::string expected;
  } cases[] = {
      {"alice " + k + "\n# x\nalice " + NewKey().Z85() + "\n", "clients.txt:3: client 'alice' is enrolled twice (first on line 1)"},
      {"alice\n", "clients.txt:1: 'alice' has no public key"},
      {"\nalice " + k.substr(0, 39) + "\n", "clients.txt:2"},
      {"alice " + k + " extra\n", "clients.txt:1: unexpected 'extra'"},
      {".hidden " + k + "\n", "clients.txt:1: client name '.hidden'"},
      {"al/ice " + k + "\n", "clients.txt:1: client name 'al/ice'"},
  };
  for (const auto& c : cases) {
    Result<AuthorizedClients> parsed = AuthorizedClients::Parse(c.text, "clients.txt");
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.expected), std::string::npos)
        << parsed.status().message();
  }
}

TEST_F(AuthorizedClientsTest, AddCreatesTheFileAndRemoveKeepsEveryOtherLine) {
  const CurvePublicKey a = NewKey(), b = NewKey();
  ASSERT_TRUE(AddAuthorizedClient(path_, "alice", a).ok());
  ASSERT_TRUE(fs::WriteFileAtomic(path_, fs::ReadFile(path_).value() + "# bob's laptop\n").ok());
  ASSERT_TRUE(AddAuthorizedClient(path_, "bob", b).ok());
  Result<AuthorizedClients> both = AuthorizedClients::Load(path_);
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(both->size(), 2u);

  ASSERT_TRUE(RemoveAuthorizedClient(path_, "alice").ok());
  const std::string text = fs::ReadFile(path_).value();
  EXPECT_NE(text.find("# bob's laptop"), std::string::npos);
  EXPECT_EQ(text.find(a.Z85()), std::string::npos);
  Result<AuthorizedClients> left = AuthorizedClients::Load(path_);
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->size(), 1u);
  EXPECT_EQ(*left->KeyOf("bob"), b);
}

TEST_F(AuthorizedClientsTest, ReplaceRotatesAKeyInPlace) {
  const CurvePublicKey old_key = NewKey(), new_key = NewKey(), bob = NewKey();
  ASSERT_TRUE(AddAuthorizedClient(path_, "alice", old_key).ok());
  ASSERT_TRUE(AddAuthorizedClient(path_, "bob", bob).ok());
  ASSERT_TRUE(AddAuthorizedClient(path_, "alice", new_key, /*replace=*/true).ok());
  Result<AuthorizedClients> rotated = AuthorizedClients::Load(path_);
  ASSERT_TRUE(rotated.ok());
  EXPECT_EQ(rotated->size(), 2u);
  EXPECT_EQ(*rotated->KeyOf("alice"), new_key);
  EXPECT_FALSE(rotated->Allows(old_key));
  EXPECT_EQ(rotated->entries()[0].name, "alice");  // Same place in the file.
  // Replacing a name that is not enrolled simply enrolls it.
  ASSERT_TRUE(AddAuthorizedClient(path_, "carol", NewKey(), /*replace=*/true).ok());
  EXPECT_EQ(AuthorizedClients::Load(path_)->size(), 3u);
}

TEST_F(AuthorizedClientsTest, AddingAnEnrolledNameOrRemovingAnUnknownOneFails) {
  ASSERT_TRUE(AddAuthorizedClient(path_, "alice", NewKey()).ok());
  EXPECT_EQ(AddAuthorizedClient(path_, "alice", NewKey()).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(AddAuthorizedClient(path_, "not a name", NewKey()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(RemoveAuthorizedClient(path_, "bob").code(), StatusCode::kNotFound);
  EXPECT_EQ(AuthorizedClients::Load(path_)->size(), 1u);
}

TEST_F(AuthorizedClientsTest, AFileThatDoesNotParseIsNeitherEditedNorLost) {
  const std::string broken = "alice not-a-key\n";
  ASSERT_TRUE(fs::WriteFileAtomic(path_, broken).ok());
  const Status s = AddAuthorizedClient(path_, "bob", NewKey());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(path_ + ":1"), std::string::npos);
  EXPECT_EQ(fs::ReadFile(path_).value(), broken);
}

TEST_F(AuthorizedClientsTest, ConcurrentEditorsLoseNoEnrolment) {
  constexpr int kPerThread = 15;
  std::vector<std::thread> editors;
  for (int t = 0; t < 3; ++t) {
    editors.emplace_back([this, t] {
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(AddAuthorizedClient(path_, "c" + std::to_string(t) + "-" + std::to_string(i),
                                        NewKey())
                        .ok());
      }
    });
  }
  for (auto& e : editors) e.join();
  Result<AuthorizedClients> all = AuthorizedClients::Load(path_);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->size(), 3u * kPerThread);
}

TEST_F(AuthorizedClientsTest, MissingFileSaysHowToCreateIt) {
  Result<AuthorizedClients> r = AuthorizedClients::Load(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("clients add"), std::string::npos);
}

}  // namespace
}  // namespace fedlora::server
