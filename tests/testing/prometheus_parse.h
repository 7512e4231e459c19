// prometheus_parse.h — reads Prometheus text with an independent parser: python3-prometheus-client
// (installed by scripts/setup.sh), so a test of our writer is not judged by our own reading of
// the format.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "common/status.h"

namespace fedlora::testing {

// Every sample of `text` as "name{label="value",...}" (labels sorted; "{}" without) -> value.
// Errors: the parser's message (a malformed exposition) or python3 missing.
inline Result<std::map<std::string, double>> ParsePrometheusText(const std::string& text) {
  static std::atomic<int> calls{0};  // A file of its own per call and process.
  const std::string path = ::testing::TempDir() + "/prometheus_parse_" +
                           std::to_string(::getpid()) + "_" + std::to_string(++calls) + ".txt";
  std::ofstream(path, std::ios::binary) << text;
  // Debian's python3-prometheus-client belongs to the system interpreter.
  const char* python = std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  const std::string command =
      std::string(python) +
      " -c '\n"
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "try:\n"
      "    for family in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
      "        for s in family.samples:\n"
      "            labels = \",\".join(k + \"=\\\"\" + v + \"\\\"\" for k, v in "
      "sorted(s.labels.items()))\n"
      "            print(s.name + \"{\" + labels + \"}\\t\" + repr(float(s.value)))\n"
      "except Exception as e:\n"
      "    print(\"ERROR\\t\" + str(e).replace(\"\\n\", \" \"))\n"
      "' " +
      path + " 2>&1";
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return Internal("cannot run python3");
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int rc = ::pclose(pipe);
  std::filesystem::remove(path);
  if (rc != 0) return Internal("python3 prometheus_client failed (rc ", rc, "): ", out);
  std::map<std::string, double> samples;
  std::size_t start = 0;
  while (start < out.size()) {
    std::size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    const std::string line = out.substr(start, end - start);
    start = end + 1;
    const std::size_t tab = line.rfind('\t');
    if (tab == std::string::npos) return Internal("unexpected parser output: ", line);
    if (line.rfind("ERROR\t", 0) == 0)
      return InvalidArgument("prometheus_client: ", line.substr(6));
    samples[line.substr(0, tab)] = std::stod(line.substr(tab + 1));
  }
  return samples;
}

}  // namespace fedlora::testing
