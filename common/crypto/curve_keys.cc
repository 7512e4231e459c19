#include "common/crypto/curve_keys.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/crypto/random.h"
#include "common/crypto/sha256.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace fedlora::crypto {
namespace {

void EnsureSodium() {
  // sodium_init is idempotent and thread-safe; it fails only without an entropy source.
  static const int rc = sodium_init();
  FEDLORA_CHECK_MSG(rc >= 0, "libsodium could not initialise (no entropy source?)");
}

std::string EncodeZ85(const std::array<std::uint8_t, kCurveKeyBytes>& bytes) {
  char text[kCurveKeyZ85Chars + 1] = {};
  FEDLORA_CHECK(zmq_z85_encode(text, bytes.data(), bytes.size()) != nullptr);
  return std::string(text, kCurveKeyZ85Chars);
}

bool IsZ85Char(char c) {
  static constexpr std::string_view kAlphabet =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  return kAlphabet.find(c) != std::string_view::npos;
}

bool DecodeZ85(std::string_view text, std::array<std::uint8_t, kCurveKeyBytes>* out) {
  if (text.size() != kCurveKeyZ85Chars) return false;
  for (char c : text) {
    if (!IsZ85Char(c)) return false;
  }
  const std::string terminated(text);  // zmq_z85_decode reads a NUL-terminated string.
  return zmq_z85_decode(out->data(), terminated.c_str()) != nullptr;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// The CZMQ / pyzmq certificate text ("ZPL"). `secret` null: the public certificate.
std::string CertificateText(const std::string& name, const CurvePublicKey& public_key,
                            const CurveSecretKey* secret) {
  std::string text = StrCat("#   ****  Generated on ", UtcNow(), " by fedlora  ****\n");
  if (secret != nullptr) {
    text += "#   ZeroMQ CURVE **Secret** Certificate\n"
            "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n";
  } else {
    text += "#   ZeroMQ CURVE Public Certificate\n"
            "#   Exchange securely, or use a secure mechanism to verify the contents\n"
            "#   of this file after exchange. Store public certificates in your home\n"
            "#   directory, in the .curve subdirectory.\n";
  }
  text += StrCat("\nmetadata\n    name = \"", name, "\"\ncurve\n    public-key = \"",
                 public_key.Z85(), "\"\n");
  if (secret != nullptr) text += StrCat("    secret-key = \"", secret->Z85(), "\"\n");
  return text;
}

// The value of `key = "..."` in a ZPL certificate, or empty. Values are Z85, which has '=' but
// no quote, so the first '=' after the key separates it from the value.
std::string ZplValue(std::string_view text, std::string_view key) {
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    const std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string_view::npos || line[first] == '#') continue;
    line.remove_prefix(first);
    if (!line.starts_with(key)) continue;
    std::string_view rest = line.substr(key.size());
    const std::size_t eq = rest.find('=');
    if (eq == std::string_view::npos || rest.substr(0, eq).find_first_not_of(" \t") !=
                                            std::string_view::npos) {
      continue;  // "public-keys = ..." or the like: not our key.
    }
    rest.remove_prefix(eq + 1);
    const std::size_t b = rest.find_first_not_of(" \t\"'");
    const std::size_t e = rest.find_last_not_of(" \t\r\"'");
    if (b == std::string_view::npos || e < b) return "";
    return std::string(rest.substr(b, e - b + 1));
  }
  return "";
}

Status ErrnoStatus(std::string_view what, const std::string& path) {
  return fs::ErrnoStatus(errno, what, path);
}

// Writes `text` to `path` with `mode`, through a temporary created with that mode (so a secret
// is never briefly readable by others). Without `overwrite`, link() makes the final step fail
// with kAlreadyExists instead of replacing a file that appeared meanwhile.
Status WriteKeyFile(const std::string& path, const std::string& text, mode_t mode,
                    bool overwrite) {
  const std::string tmp = StrCat(path, ".tmp-", RandomU64());
  Status s;
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
    if (fd.get() < 0) return ErrnoStatus("create", tmp);
    // The umask may have narrowed the mode; make it exactly what was asked.
    bool ok = ::fchmod(fd.get(), mode) == 0;
    std::size_t done = 0;
    while (ok && done < text.size()) {
      const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      ok = n > 0;
      if (ok) done += static_cast<std::size_t>(n);
    }
    ok = ok && ::fsync(fd.get()) == 0;
    if (!ok) s = ErrnoStatus("write", tmp);
  }
  if (s.ok()) {
    if (overwrite) {
      if (::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoStatus("rename to", path);
    } else if (::link(tmp.c_str(), path.c_str()) != 0) {
      s = errno == EEXIST ? Status(StatusCode::kAlreadyExists,
                                   StrCat("key file '", path, "' already exists"))
                          : ErrnoStatus("link to", path);
    }
  }
  ::unlink(tmp.c_str());  // After rename there is nothing to remove; after link, the twin.
  return s;
}

}  // namespace

std::string CurvePublicKey::Z85() const { return EncodeZ85(bytes); }

std::string CurvePublicKey::Fingerprint() const {
  const Digest d = Sha256(std::as_bytes(std::span<const std::uint8_t>(bytes)));
  const std::string hex = ToHex(std::span<const std::byte>(d.data(), 16));
  std::string out = "SHA256:";
  for (std::size_t i = 0; i < hex.size(); i += 4) {
    if (i > 0) out.push_back('-');
    out += hex.substr(i, 4);
  }
  return out;
}

CurveSecretKey::~CurveSecretKey() { sodium_memzero(bytes_.data(), bytes_.size()); }
CurveSecretKey::CurveSecretKey(CurveSecretKey&& other) noexcept : bytes_(other.bytes_) {
  sodium_memzero(other.bytes_.data(), other.bytes_.size());
}
CurveSecretKey& CurveSecretKey::operator=(CurveSecretKey&& other) noexcept {
  if (this != &other) {
    bytes_ = other.bytes_;
    sodium_memzero(other.bytes_.data(), other.bytes_.size());
  }
  return *this;
}
std::string CurveSecretKey::Z85() const { return EncodeZ85(bytes_); }
CurveSecretKey CurveSecretKey::Clone() const {
  CurveSecretKey copy;
  copy.bytes_ = bytes_;
  return copy;
}

CurveKeyPair GenerateCurveKeyPair() {
  EnsureSodium();
  CurveKeyPair pair;
  static_assert(crypto_box_PUBLICKEYBYTES == kCurveKeyBytes);
  static_assert(crypto_box_SECRETKEYBYTES == kCurveKeyBytes);
  FEDLORA_CHECK(crypto_box_keypair(pair.public_key.bytes.data(),
                                   pair.secret_key.bytes().data()) == 0);
  return pair;
}

CurvePublicKey PublicKeyOf(const CurveSecretKey& secret) {
  EnsureSodium();
  CurvePublicKey key;
  FEDLORA_CHECK(crypto_scalarmult_base(key.bytes.data(), secret.bytes().data()) == 0);
  return key;
}

Result<CurvePublicKey> ParseCurvePublicKey(std::string_view z85, std::string_view what) {
  CurvePublicKey key;
  if (!DecodeZ85(z85, &key.bytes)) {
    return InvalidArgument(what, ": '", z85.substr(0, 64),
                           "' is not a CURVE public key (40 characters of Z85, as printed by "
                           "`keygen`)");
  }
  return key;
}

KeyFilePaths KeyFilesFor(const std::string& dir, const std::string& name) {
  const std::string base = (std::filesystem::path(dir.empty() ? "." : dir) / name).string();
  return {base + ".key_secret", base + ".key"};
}

Result<CurveKeyPair> WriteNewKeyFiles(const std::string& dir, const std::string& name,
                                      bool overwrite) {
  const KeyFilePaths paths = KeyFilesFor(dir, name);
  if (!overwrite) {
    for (const std::string& p : {paths.secret_path, paths.public_path}) {
      if (::access(p.c_str(), F_OK) == 0) {
        return Status(StatusCode::kAlreadyExists,
                      StrCat("key file '", p, "' already exists (remove it, or pass --force "
                                              "to replace the key: its holders must re-enroll)"));
      }
    }
  }
  if (!dir.empty()) FEDLORA_RETURN_IF_ERROR(fs::MakeDirectories(dir));
  CurveKeyPair pair = GenerateCurveKeyPair();
  FEDLORA_RETURN_IF_ERROR(WriteKeyFile(paths.secret_path,
                                       CertificateText(name, pair.public_key, &pair.secret_key),
                                       0600, overwrite));
  FEDLORA_RETURN_IF_ERROR(WriteKeyFile(paths.public_path,
                                       CertificateText(name, pair.public_key, nullptr), 0644,
                                       overwrite));
  FEDLORA_RETURN_IF_ERROR(fs::FsyncDirectory(dir.empty() ? "." : dir));
  return pair;
}

Result<CurveKeyPair> LoadSecretKeyFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("secret key file", path);
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDenied("secret key file '", path, "' has mode ", mode,
                            ": group or others may read it; run `chmod 600 ", path,
                            "` (and consider the key exposed)");
  }
  FEDLORA_ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  const std::string secret_text = ZplValue(text, "secret-key");
  const std::string public_text = ZplValue(text, "public-key");
  CurveKeyPair pair;
  if (!DecodeZ85(secret_text, &pair.secret_key.bytes())) {
    return InvalidArgument("secret key file '", path,
                           "' has no valid `secret-key = \"<40 Z85 characters>\"` line");
  }
  pair.public_key = PublicKeyOf(pair.secret_key);
  if (!public_text.empty()) {
    CurvePublicKey stated;
    if (!DecodeZ85(public_text, &stated.bytes) || stated != pair.public_key) {
      return InvalidArgument("secret key file '", path,
                             "': its public-key does not belong to its secret-key");
    }
  }
  return pair;
}

Result<CurvePublicKey> LoadPublicKeyFile(const std::string& path) {
  FEDLORA_ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  const std::string public_text = ZplValue(text, "public-key");
  CurvePublicKey key;
  if (!DecodeZ85(public_text, &key.bytes)) {
    return InvalidArgument("public key file '", path,
                           "' has no valid `public-key = \"<40 Z85 characters>\"` line");
  }
  return key;
}

}  // namespace fedlora::crypto
