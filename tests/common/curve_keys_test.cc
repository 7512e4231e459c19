#include "common/crypto/curve_keys.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/fs.h"

namespace fedlora::crypto {
namespace {

class CurveKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_keys_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

unsigned ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

TEST_F(CurveKeysTest, WrittenKeyFilesLoadBackToTheSameKeys) {
  Result<CurveKeyPair> written = WriteNewKeyFiles(dir_, "alice");
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  const KeyFilePaths paths = KeyFilesFor(dir_, "alice");
  Result<CurveKeyPair> loaded = LoadSecretKeyFile(paths.secret_path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->public_key, written->public_key);
  EXPECT_EQ(loaded->secret_key.bytes(), written->secret_key.bytes());
  Result<CurvePublicKey> pub = LoadPublicKeyFile(paths.public_path);
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  EXPECT_EQ(*pub, written->public_key);
  // The public file must not hold the secret.
  const std::string public_text = fs::ReadFile(paths.public_path).value();
  EXPECT_EQ(public_text.find("secret-key"), std::string::npos);
  EXPECT_EQ(public_text.find(written->secret_key.Z85()), std::string::npos);
}

TEST_F(CurveKeysTest, SecretKeyFileIsCreatedWithMode0600) {
  ASSERT_TRUE(WriteNewKeyFiles(dir_, "alice").ok());
  const KeyFilePaths paths = KeyFilesFor(dir_, "alice");
  EXPECT_EQ(ModeOf(paths.secret_path), 0600u);
  EXPECT_EQ(ModeOf(paths.public_path), 0644u);
  // No temporary file is left behind.
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 2);
}

TEST_F(CurveKeysTest, SecretKeyFileReadableByOthersIsRefused) {
  ASSERT_TRUE(WriteNewKeyFiles(dir_, "alice").ok());
  const std::string path = KeyFilesFor(dir_, "alice").secret_path;
  for (const mode_t mode : {0644, 0640, 0604}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    Result<CurveKeyPair> loaded = LoadSecretKeyFile(path);
    ASSERT_FALSE(loaded.ok()) << std::oct << mode;
    EXPECT_EQ(loaded.status().code(), StatusCode::kPermissionDenied);
    EXPECT_NE(loaded.status().message().find(path), std::string::npos);
    EXPECT_NE(loaded.status().message().find("chmod 600"), std::string::npos);
  }
  ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  EXPECT_TRUE(LoadSecretKeyFile(path).ok());
}

TEST_F(CurveKeysTest, ExistingKeyFilesAreKeptUnlessForced) {
  Result<CurveKeyPair> first = WriteNewKeyFiles(dir_, "alice");
  ASSERT_TRUE(first.ok());
  Result<CurveKeyPair> again = WriteNewKeyFiles(dir_, "alice");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(LoadSecretKeyFile(KeyFilesFor(dir_, "alice").secret_path)->public_key,
            first->public_key);
  Result<CurveKeyPair> forced = WriteNewKeyFiles(dir_, "alice", /*overwrite=*/true);
  ASSERT_TRUE(forced.ok());
  EXPECT_NE(forced->public_key, first->public_key);
  EXPECT_EQ(LoadSecretKeyFile(KeyFilesFor(dir_, "alice").secret_path)->public_key,
            forced->public_key);
}

TEST_F(CurveKeysTest, ReadsCzmqAndPyzmqCertificates) {
  // A certificate as pyzmq's zmq.auth.create_certificates writes it (keys from libzmq's tests).
  std::filesystem::create_directories(dir_);
  const std::string path = dir_ + "/server.key_secret";
  std::ofstream(path) << "#   ****  Generated on 2026-12-01 by pyzmq  ****\n"
                         "#   ZeroMQ CURVE **Secret** Certificate\n"
                         "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                         "metadata\n"
                         "curve\n"
                         "    public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\n"
                         "    secret-key = \"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\"\n";
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  Result<CurveKeyPair> loaded = LoadSecretKeyFile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->public_key.Z85(), "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
}

TEST_F(CurveKeysTest, SecretKeyFileWhosePublicKeyIsNotItsOwnIsRefused) {
  std::filesystem::create_directories(dir_);
  const std::string path = dir_ + "/mixed.key_secret";
  std::ofstream(path) << "curve\n"
                         "    public-key = \"" << GenerateCurveKeyPair().public_key.Z85() << "\"\n"
                         "    secret-key = \"" << GenerateCurveKeyPair().secret_key.Z85() << "\"\n";
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  Result<CurveKeyPair> loaded = LoadSecretKeyFile(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find("does not belong"), std::string::npos);
}

TEST_F(CurveKeysTest, MissingOrMalformedKeyFilesNameTheFile) {
  Result<CurveKeyPair> missing = LoadSecretKeyFile(dir_ + "/nope.key_secret");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.key_secret"), std::string::npos);
  std::filesystem::create_directories(dir_);
  const std::string path = dir_ + "/garbage.key_secret";
  std::ofstream(path) << "secret-key = \"short\"\n";
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  Result<CurveKeyPair> garbage = LoadSecretKeyFile(path);
  EXPECT_EQ(garbage.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(garbage.status().message().find(path), std::string::npos);
}

TEST(CurvePublicKeyTest, ParsesOnlyFortyZ85Characters) {
  const CurveKeyPair pair = GenerateCurveKeyPair();
  Result<CurvePublicKey> parsed = ParseCurvePublicKey(pair.public_key.Z85());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, pair.public_key);
  const std::string z85 = pair.public_key.Z85();
  for (const std::string& bad : {z85.substr(0, 39), z85 + "0", std::string(39, '0') + " ",
                                 std::string(39, '0') + "\"", std::string()}) {
    Result<CurvePublicKey> r = ParseCurvePublicKey(bad, "security.coordinator_public_key");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("security.coordinator_public_key"), std::string::npos);
  }
}

TEST(CurvePublicKeyTest, PublicKeyIsDerivedFromTheSecretKey) {
  const CurveKeyPair pair = GenerateCurveKeyPair();
  EXPECT_EQ(PublicKeyOf(pair.secret_key), pair.public_key);
  EXPECT_NE(GenerateCurveKeyPair().public_key, pair.public_key);
}

TEST(CurvePublicKeyTest, FingerprintIsEightGroupsOfTheKeysSha256) {
  const CurvePublicKey key = GenerateCurveKeyPair().public_key;
  const std::string f = key.Fingerprint();
  ASSERT_EQ(f.size(), 7u + 8 * 4 + 7);
  EXPECT_TRUE(f.starts_with("SHA256:"));
  for (std::size_t i = 7; i < f.size(); ++i) {
    if ((i - 7) % 5 == 4) {
      EXPECT_EQ(f[i], '-') << f;
    } else {
      EXPECT_TRUE(std::isxdigit(static_cast<unsigned char>(f[i]))) << f;
    }
  }
  EXPECT_EQ(key.Fingerprint(), f);
  EXPECT_NE(GenerateCurveKeyPair().public_key.Fingerprint(), f);
}

}  // namespace
}  // namespace fedlora::crypto
