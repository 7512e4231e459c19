// replay_main.cc — runs a fuzz target's corpus without libFuzzer, as an ordinary test.
//
// Linked with each tests/fuzz/<name>_fuzz.cc in the normal (g++) build, in place of libFuzzer's
// main (the pattern libzmq uses): every regular file under the directories or files named on the
// command line goes through LLVMFuzzerTestOneInput once, in name order, each in its own buffer of
// exactly its size so a sanitizer build catches reads past the end. A crash or failed property
// check (abort) fails the test; the name of the input is printed before it runs, so the log says
// which one. An empty corpus fails too: a replay test that replays nothing proves nothing.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      for (const fs::directory_entry& e : fs::recursive_directory_iterator(argv[i], ec)) {
        if (e.is_regular_file()) inputs.push_back(e.path());
      }
    } else if (fs::is_regular_file(argv[i], ec)) {
      inputs.emplace_back(argv[i]);
    } else {
      std::fprintf(stderr, "%s: no such file or directory\n", argv[i]);
      return 1;
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "no corpus inputs found in the paths given\n");
    return 1;
  }
  std::sort(inputs.begin(), inputs.end());
  for (const fs::path& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "%s: cannot open\n", path.c_str());
      return 1;
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    std::printf("replaying %s (%zu bytes)\n", path.c_str(), bytes.size());
    std::fflush(stdout);
    // A heap copy of exactly the input's size (an empty input gets a null pointer, as libFuzzer
    // would pass a valid pointer to zero bytes; the targets never dereference it then).
    std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(data.data(), data.size());
  }
  std::printf("replayed %zu input(s) without a crash\n", inputs.size());
  return 0;
}
