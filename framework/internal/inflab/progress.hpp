// Progress of long stages: a bar with rate and ETA on a terminal, periodic log lines otherwise.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace inflab {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::string unit = "it");
  ~Progress();
  void advance(std::int64_t amount = 1);
  void finish();
  static void set_quiet(bool quiet);
  static bool quiet();  // --quiet: no progress and no informational messages (warnings and errors stay)

 private:
  void draw(bool final);
  std::string label_, unit_;
  std::int64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_, finished_ = false;
};

}  // namespace inflab
