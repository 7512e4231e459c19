// yaml_config.h — reading YAML configuration into typed structs, strictly.
//
// One door to yaml-cpp (whose exceptions stop in yaml_config.cc). A ConfigDocument is a YAML file
// plus `--set key.sub=value` overrides; a ConfigSection reads keys into fields one at a time and
// remembers which it read, so Finish() can reject every key nobody asked for. Errors name the
// file, line and dotted key ("coord.yaml:7: key 'rounds': expected an unsigned integer, got 'x'");
// keys that came from --set say so instead of a line.
//
// Typical use:
//   FEDLORA_ASSIGN_OR_RETURN(ConfigDocument doc, ConfigDocument::Load(path, overrides));
//   ConfigSection root = doc.Root();
//   FEDLORA_RETURN_IF_ERROR(root.Read("rounds", &config.rounds));
//   ConfigSection train = root.Section("train");
//   FEDLORA_RETURN_IF_ERROR(train.Read("learning_rate", &config.train.learning_rate));
//   FEDLORA_RETURN_IF_ERROR(train.Finish());
//   FEDLORA_RETURN_IF_ERROR(root.Finish());
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedlora::config {

class ConfigSection;

class ConfigDocument {
 public:
  // Loads `path` (empty: start from an empty document) and applies each "a.b.c=value" override,
  // whose value is parsed as YAML ("3", "0.5", "[q_proj, v_proj]", "true"). kNotFound for a
  // missing file; kInvalidArgument for syntax errors (with line) and malformed overrides.
  static Result<ConfigDocument> Load(const std::string& path,
                                     std::span<const std::string> overrides);
  // Parses YAML text; `source_name` is used in messages in place of a file name.
  static Result<ConfigDocument> Parse(std::string_view yaml, std::string source_name,
                                      std::span<const std::string> overrides = {});

  ConfigDocument(ConfigDocument&&) noexcept;
  ConfigDocument& operator=(ConfigDocument&&) noexcept;
  ~ConfigDocument();

  ConfigSection Root() const;
  const std::string& source() const;
  // The directory relative paths in this document are resolved against (the file's directory).
  std::string BaseDir() const;

 private:
  friend class ConfigSection;
  ConfigDocument();
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// A mapping inside a document. Cheap to copy; copies share the record of keys read.
class ConfigSection {
 public:
  // Each Read leaves `*out` untouched when the key is absent, so defaults set beforehand stay.
  // kInvalidArgument when the value has the wrong type or is out of the type's range.
  Status Read(std::string_view key, bool* out) const;
  Status Read(std::string_view key, std::int32_t* out) const;
  Status Read(std::string_view key, std::uint32_t* out) const;
  Status Read(std::string_view key, std::int64_t* out) const;
  Status Read(std::string_view key, std::uint64_t* out) const;
  Status Read(std::string_view key, double* out) const;
  Status Read(std::string_view key, std::string* out) const;
  Status Read(std::string_view key, std::vector<std::string>* out) const;
  Status Read(std::string_view key, std::vector<std::uint32_t>* out) const;
  Status Read(std::string_view key, std::vector<double>* out) const;

  // Like Read, but the string is a file path: relative paths are resolved against the
  // document's directory (or kept as given when the document has no file).
  Status ReadPath(std::string_view key, std::string* out) const;

  bool Has(std::string_view key) const;
  // The nested mapping at `key` (an empty section when absent). A non-mapping value is reported
  // by Finish() of this section's child, so callers can chain without checking.
  ConfigSection Section(std::string_view key) const;

  // kInvalidArgument listing every key in this mapping that no Read/Section asked for, with its
  // line, or an error if this section is not a mapping at all.
  Status Finish() const;

  // "train.learning_rate" for key "learning_rate" in section "train".
  std::string PathOf(std::string_view key) const;

 private:
  friend class ConfigDocument;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace fedlora::config
