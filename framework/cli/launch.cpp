#include "launch.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "inflab/error.hpp"

namespace fs = std::filesystem;

namespace inflab {

// `inflab launch -n N FILE.toml [run options]`: N local ranks of `inflab run`, like torchrun on
// one machine. They meet through a FileStore in a fresh temporary file. When a rank fails, the
// others get `timeout` seconds to fail on their own (naming it), then are stopped.
int command_launch(int ranks, const std::vector<std::string>& run_arguments, int threads, double timeout) {
  if (ranks < 1) throw Error(fmt::format("--ranks: expected at least 1, found {}", ranks));
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const int per_rank = threads > 0 ? threads : std::max(1, static_cast<int>(cores) / ranks);
  char store_template[] = "/tmp/inflab-store-XXXXXX";
  int fd = ::mkstemp(store_template);
  if (fd < 0) throw Error("launch: cannot create the rendezvous file in /tmp");
  ::close(fd);
  ::unlink(store_template);  // FileStore creates it; it must not pre-exist with stale content
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<pid_t> children;
  for (int r = 0; r < ranks; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) throw Error("launch: fork failed");
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(ranks).c_str(), 1);
      ::setenv("INFLAB_STORE_FILE", store_template, 1);
      ::setenv("INFLAB_DISTRIBUTED_TIMEOUT", fmt::format("{}", timeout).c_str(), 1);
      std::vector<std::string> args{self, "--threads", std::to_string(per_rank)};
      if (r != 0) args.push_back("--quiet");                        // one progress display: rank 0's
      if (run_arguments.front() != "index") args.push_back("run");  // `launch -n N index build ...`
      args.insert(args.end(), run_arguments.begin(), run_arguments.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(self.c_str(), argv.data());
      ::_exit(127);
    }
    children.push_back(pid);
  }
  std::cerr << fmt::format("[inflab] launched {} ranks ({} thread(s) each, collective timeout {} s)\n", ranks,
                           per_rank, timeout);
  std::vector<int> status(ranks, -1);
  int first_failed = -1, running = ranks;
  auto failed_at = std::chrono::steady_clock::now();
  while (running > 0) {
    int raw = 0;
    pid_t pid = ::waitpid(-1, &raw, WNOHANG);
    if (pid > 0) {
      int r = static_cast<int>(std::find(children.begin(), children.end(), pid) - children.begin());
      status[r] = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
      --running;
      if (status[r] != 0 && first_failed < 0) first_failed = r, failed_at = std::chrono::steady_clock::now();
      continue;
    }
    if (first_failed >= 0 &&
        std::chrono::steady_clock::now() - failed_at > std::chrono::duration<double>(timeout + 10)) {
      for (int r = 0; r < ranks; ++r)
        if (status[r] < 0) ::kill(children[r], SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::error_code ignored;
  fs::remove(store_template, ignored);
  if (first_failed < 0) return 0;
  std::vector<std::string> report;
  for (int r = 0; r < ranks; ++r) report.push_back(fmt::format("rank {}: exit {}", r, status[r]));
  throw Error(fmt::format("launch: rank {} failed first (exit status {}); {}", first_failed,
                          status[first_failed], fmt::join(report, ", ")));
}

}  // namespace inflab
