// yaml_config_fuzz.cc — fuzzes YAML configuration loading (common/config/yaml_config.h
// ConfigDocument::Parse with --set overrides) and the coordinator's and client's config readers
// on the result (server/config.h ParseCoordinatorConfig, client/config.h ParseClientConfig).
//
// Input (fuzz_input.h layout): the YAML document, then up to four "key.sub=value" overrides.
// An input without a length prefix is still useful: it is then one short or empty document.
//
// Each reader gets a document of its own (a document remembers which keys were read, and
// Finish() rejects the rest). Checks: no crash, no sanitizer report, no exception escaping
// (yaml-cpp throws; yaml_config.cc must catch everything); every error is a Status.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "client/config.h"
#include "common/config/yaml_config.h"
#include "server/config.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace fedlora;
  const std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const std::vector<std::span<const std::byte>> parts = fuzz::SplitParts(input, 5);
  const std::string_view yaml = parts.empty() ? std::string_view() : fuzz::AsText(parts[0]);
  std::vector<std::string> overrides;
  for (std::size_t i = 1; i < parts.size(); ++i) overrides.emplace_back(fuzz::AsText(parts[i]));

  Result<config::ConfigDocument> server_doc = config::ConfigDocument::Parse(yaml, "fuzz.yaml", overrides);
  fuzz::Report("ConfigDocument::Parse", server_doc);
  if (!server_doc.ok()) return 0;
  (void)server_doc->Root().PathOf("x");
  server::CoordinatorConfig coordinator;
  fuzz::Report("ParseCoordinatorConfig", server::ParseCoordinatorConfig(server_doc->Root(), &coordinator));

  Result<config::ConfigDocument> client_doc = config::ConfigDocument::Parse(yaml, "fuzz.yaml", overrides);
  fuzz::Require(client_doc.ok(), "parsing the same text twice gives the same verdict");
  client::ClientConfig client_config;
  fuzz::Report("ParseClientConfig", client::ParseClientConfig(client_doc->Root(), &client_config));
  return 0;
}
