#include "inflab/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>

namespace inflab {

namespace {
std::atomic<bool> quiet_flag{false};

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  const auto s = static_cast<int>(std::lround(seconds));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}
}  // namespace

void Progress::set_quiet(bool q) { quiet_flag = q; }
bool Progress::quiet() { return quiet_flag; }

Progress::Progress(std::string label, std::int64_t total, std::string unit)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_),
      tty_(::isatty(STDERR_FILENO) != 0) {}

Progress::~Progress() { finish(); }

void Progress::advance(std::int64_t amount) {
  done_ += amount;
  auto now = std::chrono::steady_clock::now();
  // Terminals redraw often; logs get a line every 10 seconds at most.
  auto interval = tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(10000);
  if (now - last_draw_ >= interval) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final) {
  if (quiet_flag || label_.empty()) return;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
  double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1;
  double fraction = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1;
  if (tty_) {
    int width = 28, filled = static_cast<int>(fraction * width);
    std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
    std::fprintf(stderr, "\r%-28s [%s] %3d%% %lld/%lld %s  %.1f %s/s  ETA %s%s", label_.c_str(), bar.c_str(),
                 static_cast<int>(fraction * 100), static_cast<long long>(done_),
                 static_cast<long long>(total_), unit_.c_str(), rate, unit_.c_str(),
                 final ? format_duration(elapsed).c_str() : format_duration(eta).c_str(),
                 final ? " (done)\n" : "   ");
  } else {
    std::fprintf(stderr, "[inflab] %s: %lld/%lld %s (%.0f%%), %.1f %s/s, %s\n", label_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), fraction * 100,
                 rate, unit_.c_str(),
                 final ? fmt::format("done in {}", format_duration(elapsed)).c_str()
                       : fmt::format("ETA {}", format_duration(eta)).c_str());
  }
  std::fflush(stderr);
}

}  // namespace inflab
