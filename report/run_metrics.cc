#include "report/run_metrics.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/fs.h"

namespace fedlora::report {

namespace {

void Flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, double>* out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_number()) {
      (*out)[key] = it->get<double>();
    } else if (it->is_object() && prefix.empty()) {  // One level: "simulation", "privacy".
      Flatten(*it, key, out);
    }
  }
}

}  // namespace

std::vector<std::pair<double, double>> RunMetrics::Points(const std::string& field) const {
  std::vector<std::pair<double, double>> points;
  const auto it = fields.find(field);
  if (it == fields.end()) return points;
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    if (it->second[i]) points.emplace_back(static_cast<double>(rounds[i]), *it->second[i]);
  }
  return points;
}

std::optional<double> RunMetrics::Last(const std::string& field) const {
  const auto it = fields.find(field);
  if (it == fields.end() || it->second.empty()) return std::nullopt;
  return it->second.back();
}

double RunMetrics::Total(const std::string& field) const {
  double total = 0;
  const auto it = fields.find(field);
  if (it == fields.end()) return 0;
  for (std::size_t i = 0; i < rounds.size(); ++i) {
    if (rounds[i] >= 1 && it->second[i]) total += *it->second[i];
  }
  return total;
}

bool RunMetrics::Has(const std::string& field) const { return !Points(field).empty(); }

Result<RunMetrics> LoadRun(const std::string& dir) {
  const std::string path = dir + "/metrics.jsonl";
  FEDLORA_ASSIGN_OR_RETURN(const std::string text, fs::ReadFile(path));
  RunMetrics run;
  run.dir = dir;
  run.label = std::filesystem::path(dir).lexically_normal().filename().string();
  if (run.label.empty()) run.label = std::filesystem::path(dir).parent_path().filename().string();
  std::vector<std::map<std::string, double>> lines;
  std::size_t start = 0, line_no = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("round") || !j["round"].is_number_unsigned()) {
      return InvalidArgument(path, ":", line_no,
                             ": not a metrics line (a JSON object with a "
                             "\"round\")");
    }
    run.rounds.push_back(j["round"].get<std::uint64_t>());
    if (j.contains("strategy") && j["strategy"].is_string()) run.strategy = j["strategy"];
    std::map<std::string, double> flat;
    Flatten(j, "", &flat);
    lines.push_back(std::move(flat));
  }
  if (run.rounds.empty()) return FailedPrecondition(path, " has no committed round yet");
  for (std::size_t i = 0; i < lines.size(); ++i) {
    for (const auto& [key, value] : lines[i]) {
      auto& column = run.fields[key];
      column.resize(lines.size());
      column[i] = value;
    }
  }
  return run;
}

}  // namespace fedlora::report
