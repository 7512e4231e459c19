#include "common/config/yaml_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <limits>

#include "common/fs.h"

namespace fedlora::config {
namespace {

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = path.find('.', start);
    parts.emplace_back(path.substr(start, dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return parts;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

template <typename T>
bool ParseInteger(const std::string& s, T* out) {
  if (s.empty()) return false;
  const char* begin = s.data();
  const char* end = s.data() + s.size();
  if (*begin == '+') ++begin;
  const auto [ptr, ec] = std::from_chars(begin, end, *out);
  return ec == std::errc() && ptr == end;
}

}  // namespace

// ---- ConfigDocument ------------------------------------------------------------------------

struct ConfigDocument::Impl {
  YAML::Node root;
  std::string source;
  std::string base_dir;
  std::set<std::string> override_paths;  // Dotted keys set on the command line.
};

struct ConfigSection::Impl {
  std::shared_ptr<const ConfigDocument::Impl> doc;
  YAML::Node node;     // Undefined when the section is absent.
  std::string prefix;  // "train." for section "train"; "" at the root.
  std::shared_ptr<std::set<std::string>> known = std::make_shared<std::set<std::string>>();

  // "file.yaml:12" or "--set train.lr" for error messages about `key`.
  std::string Where(std::string_view key, const YAML::Node& value) const {
    const std::string path = prefix + std::string(key);
    for (const std::string& p : doc->override_paths) {
      if (p == path || p.starts_with(path + ".") || path.starts_with(p + ".")) {
        return StrCat("--set ", p);
      }
    }
    const YAML::Mark mark = value.Mark();
    if (mark.line >= 0) return StrCat(doc->source, ":", mark.line + 1);
    return doc->source;
  }

  // The value at `key`, or an undefined node. Registers the key as known.
  YAML::Node Get(std::string_view key) const {
    known->insert(std::string(key));
    if (!node.IsDefined() || !node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& cnode = node;
    YAML::Node value = cnode[std::string(key)];
    // A missing key yields an "invalid" node that throws on most uses; normalise it.
    if (!value.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    return value;
  }

  Status TypeError(std::string_view key, const YAML::Node& value, std::string_view expected) const {
    std::string got = value.IsScalar() ? StrCat("'", value.Scalar(), "'")
                      : value.IsSequence() ? std::string("a list")
                      : value.IsMap()      ? std::string("a mapping")
                                           : std::string("nothing");
    return InvalidArgument(Where(key, value), ": key '", prefix, key, "': expected ", expected,
                           ", got ", got);
  }

  template <typename T>
  Status ReadInteger(std::string_view key, T* out, std::string_view expected) const {
    const YAML::Node v = Get(key);
    if (!v.IsDefined()) return OkStatus();
    T parsed{};
    if (!v.IsScalar() || !ParseInteger(v.Scalar(), &parsed)) return TypeError(key, v, expected);
    *out = parsed;
    return OkStatus();
  }
};

ConfigDocument::ConfigDocument() : impl_(std::make_shared<Impl>()) {}
ConfigDocument::ConfigDocument(ConfigDocument&&) noexcept = default;
ConfigDocument& ConfigDocument::operator=(ConfigDocument&&) noexcept = default;
ConfigDocument::~ConfigDocument() = default;

Result<ConfigDocument> ConfigDocument::Parse(std::string_view yaml, std::string source_name,
                                             std::span<const std::string> overrides) {
  ConfigDocument doc;
  doc.impl_->source = std::move(source_name);
  try {
    doc.impl_->root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(doc.impl_->source, ":", e.mark.line + 1, ": ", e.msg);
  }
  YAML::Node& root = doc.impl_->root;
  if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) {
    return InvalidArgument(doc.impl_->source, ": the top level must be a mapping of keys");
  }
  for (const std::string& o : overrides) {
    const std::size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument("--set '", o, "': expected key=value, e.g. --set rounds=5");
    }
    const std::string key = o.substr(0, eq);
    const std::vector<std::string> parts = SplitPath(key);
    if (std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); })) {
      return InvalidArgument("--set '", o, "': empty component in key '", key, "'");
    }
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      return InvalidArgument("--set ", key, ": cannot parse value: ", e.msg);
    }
    if (!value.IsDefined()) value = YAML::Node(YAML::NodeType::Null);
    YAML::Node cur;
    cur.reset(root);
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node child = cur[parts[i]];
      if (!child.IsDefined() || child.IsNull()) {
        child = YAML::Node(YAML::NodeType::Map);
      } else if (!child.IsMap()) {
        return InvalidArgument("--set ", key, ": '", parts[i], "' is not a section");
      }
      cur.reset(child);
    }
    cur[parts.back()] = value;
    doc.impl_->override_paths.insert(key);
  }
  return doc;
}

Result<ConfigDocument> ConfigDocument::Load(const std::string& path,
                                            std::span<const std::string> overrides) {
  if (path.empty()) return Parse("", "<defaults>", overrides);
  Result<std::string> text = fs::ReadFile(path);
  if (!text.ok()) return text.status().WithContext("config file");
  FEDLORA_ASSIGN_OR_RETURN(ConfigDocument doc, Parse(*text, path, overrides));
  doc.impl_->base_dir = std::filesystem::path(path).parent_path().string();
  return doc;
}

ConfigSection ConfigDocument::Root() const {
  ConfigSection s;
  s.impl_ = std::make_shared<ConfigSection::Impl>();
  s.impl_->doc = impl_;
  s.impl_->node.reset(impl_->root);
  return s;
}

const std::string& ConfigDocument::source() const { return impl_->source; }
std::string ConfigDocument::BaseDir() const { return impl_->base_dir; }

// ---- ConfigSection -------------------------------------------------------------------------

Status ConfigSection::Read(std::string_view key, bool* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (v.IsScalar()) {
    const std::string s = Lower(v.Scalar());
    if (s == "true" || s == "yes" || s == "on") {
      *out = true;
      return OkStatus();
    }
    if (s == "false" || s == "no" || s == "off") {
      *out = false;
      return OkStatus();
    }
  }
  return impl_->TypeError(key, v, "true or false");
}

Status ConfigSection::Read(std::string_view key, std::int32_t* out) const {
  return impl_->ReadInteger(key, out, "an integer");
}
Status ConfigSection::Read(std::string_view key, std::uint32_t* out) const {
  return impl_->ReadInteger(key, out, "an unsigned integer below 2^32");
}
Status ConfigSection::Read(std::string_view key, std::int64_t* out) const {
  return impl_->ReadInteger(key, out, "an integer");
}
Status ConfigSection::Read(std::string_view key, std::uint64_t* out) const {
  return impl_->ReadInteger(key, out, "an unsigned integer");
}

Status ConfigSection::Read(std::string_view key, double* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (v.IsScalar()) {
    const std::string& s = v.Scalar();
    double parsed = 0;
    const char* begin = s.data() + (!s.empty() && s[0] == '+' ? 1 : 0);
    const auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), parsed);
    if (!s.empty() && ec == std::errc() && ptr == s.data() + s.size() && std::isfinite(parsed)) {
      *out = parsed;
      return OkStatus();
    }
  }
  return impl_->TypeError(key, v, "a finite number");
}

Status ConfigSection::Read(std::string_view key, std::string* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (v.IsNull()) {
    out->clear();
    return OkStatus();
  }
  if (!v.IsScalar()) return impl_->TypeError(key, v, "a string");
  *out = v.Scalar();
  return OkStatus();
}

Status ConfigSection::Read(std::string_view key, std::vector<std::string>* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (!v.IsSequence()) return impl_->TypeError(key, v, "a list of strings");
  std::vector<std::string> items;
  for (const YAML::Node& item : v) {
    if (!item.IsScalar()) return impl_->TypeError(key, item, "a list of strings");
    items.push_back(item.Scalar());
  }
  *out = std::move(items);
  return OkStatus();
}

Status ConfigSection::Read(std::string_view key, std::vector<std::uint32_t>* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (!v.IsSequence()) return impl_->TypeError(key, v, "a list of unsigned integers");
  std::vector<std::uint32_t> items;
  for (const YAML::Node& item : v) {
    std::uint32_t x = 0;
    if (!item.IsScalar() || !ParseInteger(item.Scalar(), &x)) {
      return impl_->TypeError(key, item, "a list of unsigned integers");
    }
    items.push_back(x);
  }
  *out = std::move(items);
  return OkStatus();
}

Status ConfigSection::Read(std::string_view key, std::vector<double>* out) const {
  const YAML::Node v = impl_->Get(key);
  if (!v.IsDefined()) return OkStatus();
  if (!v.IsSequence()) return impl_->TypeError(key, v, "a list of numbers");
  std::vector<double> items;
  for (const YAML::Node& item : v) {
    double x = 0;
    if (!item.IsScalar()) return impl_->TypeError(key, item, "a list of numbers");
    const std::string& str = item.Scalar();
    const auto [ptr, ec] = std::from_chars(str.data(), str.data() + str.size(), x);
    if (str.empty() || ec != std::errc() || ptr != str.data() + str.size() || !std::isfinite(x)) {
      return impl_->TypeError(key, item, "a list of finite numbers");
    }
    items.push_back(x);
  }
  *out = std::move(items);
  return OkStatus();
}

Status ConfigSection::ReadPath(std::string_view key, std::string* out) const {
  std::string value;
  bool present = Has(key);
  FEDLORA_RETURN_IF_ERROR(Read(key, &value));
  if (!present) return OkStatus();
  const std::string path = PathOf(key);
  const bool from_cli = impl_->Where(key, YAML::Node()).starts_with("--set");
  std::filesystem::path p(value);
  if (!value.empty() && p.is_relative() && !from_cli && !impl_->doc->base_dir.empty()) {
    p = std::filesystem::path(impl_->doc->base_dir) / p;
    value = p.lexically_normal().string();
  }
  *out = value;
  return OkStatus();
}

bool ConfigSection::Has(std::string_view key) const {
  if (!impl_->node.IsDefined() || !impl_->node.IsMap()) return false;
  const YAML::Node& cnode = impl_->node;
  return cnode[std::string(key)].IsDefined();
}

ConfigSection ConfigSection::Section(std::string_view key) const {
  ConfigSection s;
  s.impl_ = std::make_shared<Impl>();
  s.impl_->doc = impl_->doc;
  s.impl_->prefix = PathOf(key) + ".";
  s.impl_->node.reset(impl_->Get(key));
  return s;
}

Status ConfigSection::Finish() const {
  const YAML::Node& node = impl_->node;
  if (!node.IsDefined() || node.IsNull()) return OkStatus();
  const std::string name = impl_->prefix.empty()
                               ? std::string("top level")
                               : impl_->prefix.substr(0, impl_->prefix.size() - 1);
  if (!node.IsMap()) {
    return InvalidArgument(impl_->Where("", node), ": '", name, "' must be a mapping of keys");
  }
  std::vector<std::string> unknown;
  std::set<std::string> seen;
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    if (!seen.insert(key).second) {  // yaml-cpp keeps both; the first would win silently.
      return InvalidArgument(impl_->Where(key, kv.first), ": key '", impl_->prefix, key,
                             "' appears more than once");
    }
    if (!impl_->known->contains(key)) {
      unknown.push_back(StrCat(impl_->Where(key, kv.first), ": unknown key '", impl_->prefix, key,
                               "'"));
    }
  }
  if (unknown.empty()) return OkStatus();
  std::string known;
  for (const std::string& k : *impl_->known) known += (known.empty() ? "" : ", ") + k;
  std::string message;
  for (const std::string& u : unknown) message += (message.empty() ? "" : "; ") + u;
  return InvalidArgument(message, " (valid keys in ", name, ": ", known, ")");
}

std::string ConfigSection::PathOf(std::string_view key) const {
  return impl_->prefix + std::string(key);
}

}  // namespace fedlora::config
