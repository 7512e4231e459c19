// Uses an installed fedlora: writes and reads back a safetensors file, and renders a metric.
#include <cstdio>
#include <vector>

#include "common/ops/prometheus_text.h"
#include "common/safetensors.h"
#include "common/tensor.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::vector<double> values = {1.5, -2.0, 3.25, 4.0, 0.5, -1.0};
  fedlora::TensorMap tensors;
  tensors["layer.lora_A.weight"] = fedlora::FromDoubles(fedlora::DType::kF32, {2, 3}, values);
  if (const fedlora::Status s = fedlora::safetensors::Write(argv[1], tensors); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  const fedlora::Result<fedlora::safetensors::File> file = fedlora::safetensors::Read(argv[1]);
  if (!file.ok() || fedlora::ToDoubles(file->tensors.at("layer.lora_A.weight")) != values) {
    std::fprintf(stderr, "round trip failed\n");
    return 1;
  }
  fedlora::ops::PrometheusText text;
  text.Gauge("consumer_tensors", "Tensors read back.", static_cast<double>(file->tensors.size()));
  std::printf("%s", text.str().c_str());
  return 0;
}
