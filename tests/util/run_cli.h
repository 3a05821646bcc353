// RunCli: runs the built `expertstore` binary with arguments, stdout captured, stderr discarded or captured. For
// tests that drive the CLI as a process (es_test_util defines ES_BINARY_DIR, see tests/util/CMakeLists.txt).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace es::testing {

inline constexpr char kCliPath[] = ES_BINARY_DIR "/expertstore";

struct CliResult {
  int exit_code = -1;  // -1 when it could not run or did not exit normally
  std::string out;
};

// Runs a shell command line (/bin/sh), its stdout captured.
inline CliResult RunCommand(const std::string& cmd) {
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// `with_stderr`: stderr is captured into `out` too (after stdout's lines, as the shell interleaves them).
inline CliResult RunCli(const std::string& args, bool with_stderr = false) {
  return RunCommand(std::string(kCliPath) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null"));
}

}  // namespace es::testing
