// authorized_clients.h — the coordinator's list of enrolled clients: which CURVE public key may
// use which client name.
//
// The file (security.authorized_clients) holds one `NAME PUBLIC_KEY` line per client, the key in
// Z85 as `keygen` prints it:
//
//   # Enrolled 2026-12-03 by ops
//   alice   rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7
//   bob     Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID   # trailing comments start with " #"
//
// Blank lines and lines starting with '#' are ignored. A name may appear once; a duplicate name or
// a malformed line is an error naming the file and line. One key may be enrolled under several
// names: a `fedlora-sim --workers` shard runs many virtual clients with one key.
//
// Editing (AddAuthorizedClient, RemoveAuthorizedClient) keeps every other line and comment,
// serialises concurrent editors with a lock file next to it, and replaces the file atomically,
// so a running coordinator (which reloads it on change or SIGHUP) never reads half a file.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/crypto/curve_keys.h"
#include "common/status.h"

namespace fedlora::server {

struct AuthorizedClient {
  std::string name;
  crypto::CurvePublicKey key;
  int line = 0;  // 1-based line in the file.
};

class AuthorizedClients {
 public:
  AuthorizedClients() = default;

  // Parses the file's text; `source` names it in errors ("clients.txt:4: ...").
  static Result<AuthorizedClients> Parse(std::string_view text, const std::string& source);
  // kNotFound when the file is missing (the message says how to create it).
  static Result<AuthorizedClients> Load(const std::string& path);

  // The key enrolled for `name`, or nullptr.
  const crypto::CurvePublicKey* KeyOf(std::string_view name) const;
  // The names `key` is enrolled under, sorted; empty if none.
  std::vector<std::string> NamesOf(const crypto::CurvePublicKey& key) const;
  bool Allows(const crypto::CurvePublicKey& key) const;
  int LineOf(std::string_view name) const;  // The file line enrolling `name`; 0 if none.

  const std::vector<AuthorizedClient>& entries() const { return entries_; }  // File order.
  std::size_t size() const { return entries_.size(); }

 private:
  std::vector<AuthorizedClient> entries_;
  std::map<std::string, std::size_t, std::less<>> by_name_;
  std::multimap<crypto::CurvePublicKey, std::size_t> by_key_;
};

// Appends `name key` to the file at `path` (created with a header comment if missing). With
// `replace`, an enrolled name gets the new key in place, in one atomic rewrite (a key rotation:
// the session of the old key closes, the new key may connect). kAlreadyExists if the name is
// enrolled already and not `replace`; kInvalidArgument for an invalid name or key, or when the
// existing file does not parse (it is left as it is).
Status AddAuthorizedClient(const std::string& path, const std::string& name,
                           const crypto::CurvePublicKey& key, bool replace = false);

// Removes the line enrolling `name`. kNotFound if it is not enrolled.
Status RemoveAuthorizedClient(const std::string& path, const std::string& name);

}  // namespace fedlora::server
