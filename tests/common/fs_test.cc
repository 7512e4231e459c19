#include "common/fs.h"

#include <gtest/gtest.h>

#include <cerrno>

#include <filesystem>

namespace fedlora::fs {
namespace {

class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/fedlora_fs_test_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    ASSERT_TRUE(MakeDirectories(dir_).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(FsTest, AtomicWriteReplacesContentAndLeavesNoTemporaries) {
  const std::string path = dir_ + "/state.json";
  ASSERT_TRUE(WriteFileAtomic(path, std::string_view("one")).ok());
  ASSERT_TRUE(WriteFileAtomic(path, std::string_view("two")).ok());
  EXPECT_EQ(ReadFile(path).value(), "two");
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(FsTest, AppendAddsWholeLines) {
  const std::string path = dir_ + "/m.jsonl";
  ASSERT_TRUE(AppendLineSynced(path, "{\"round\":1}").ok());
  ASSERT_TRUE(AppendLineSynced(path, "{\"round\":2}").ok());
  EXPECT_EQ(ReadFile(path).value(), "{\"round\":1}\n{\"round\":2}\n");
}

TEST_F(FsTest, CommitDirectoryRenamesStagingIntoPlace) {
  const std::string staging = dir_ + "/.staging";
  ASSERT_TRUE(MakeDirectories(staging).ok());
  ASSERT_TRUE(WriteFileSynced(staging + "/a", std::string_view("x")).ok());
  ASSERT_TRUE(CommitDirectory(staging, dir_ + "/000001").ok());
  EXPECT_FALSE(std::filesystem::exists(staging));
  EXPECT_EQ(ReadFile(dir_ + "/000001/a").value(), "x");
}

TEST_F(FsTest, MissingFileIsNotFoundAndNamesThePath) {
  const Result<std::string> r = ReadFile(dir_ + "/nope");
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("nope"), std::string::npos);
}

TEST(ErrnoStatusTest, CodesSayWhatTheCallerCanDoNextAndTheMessageNamesThePath) {
  EXPECT_EQ(ErrnoStatus(ENOENT, "open", "/x").code(), StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EACCES, "open", "/x").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EPERM, "open", "/x").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EEXIST, "create", "/x").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoStatus(ENOSPC, "write", "/x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EMFILE, "open", "/x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EIO, "read", "/x").code(), StatusCode::kDataLoss);
  EXPECT_EQ(ErrnoStatus(ENOENT, "open", "/data/a.txt").message(),
            "open '/data/a.txt': No such file or directory");
}

}  // namespace
}  // namespace fedlora::fs
