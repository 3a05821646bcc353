// expertstore: the command-line entry point. Dispatches to the subcommands registered by the cli_*.cc files.
#include <algorithm>
#include <new>
#include <system_error>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <string>
#include <vector>

#include <unistd.h>

#include "store/base/heap.h"
#include "tools/cli.h"

namespace {

void PrintUsage(const std::vector<es::cli::Command>& commands) {
  std::fprintf(stderr, "usage: expertstore COMMAND [flags]  (global: --store DIR --json --quiet --io-engine E --read-only; --version)\n\n");
  for (const auto& c : commands) std::fprintf(stderr, "  %-28s %s\n", c.name.c_str(), c.summary.c_str());
  std::fprintf(stderr, "\nexpertstore COMMAND --help shows a command's flags.\n");
}

void PrintCommandHelp(const es::cli::Command& c) {
  std::fprintf(stderr, "usage: expertstore %s\n%s\n", c.usage.c_str(), c.summary.c_str());
  for (const auto& f : c.flags) {
    std::string name = "--" + f.name + (f.takes_value ? " V" : "");
    std::fprintf(stderr, "  %-24s %s\n", name.c_str(), f.help.c_str());
  }
}

}  // namespace

namespace {

int Run(int argc, char** argv);

}  // namespace

#ifdef ES_WITH_JEMALLOC
// jemalloc's settings, read when it starts (MALLOC_CONF in the environment still overrides them): a background
// thread returns freed pages to the system after a second, so that a serving process's resident memory follows the
// memory it uses instead of its arenas' high-water marks. One arena (threads keep their own caches in front of it):
// jemalloc 5.3 creates further arenas lazily, on a thread's first allocation, and when that creation is refused
// memory it crashes the thread (seen under an address-space limit, in a RocksDB background thread) where an
// allocation that fails should end in exit 6.
extern "C" {
// NOLINTNEXTLINE: the name is jemalloc's
const char* malloc_conf = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1";
}
#endif

namespace {

// Whether errors print as JSON documents (--json), for the out-of-memory handler, which cannot ask the flags.
bool g_json_errors = false;

// An allocation the system refused (operator new, here or in a dependency) ends the process at once: exit 6 and
// the error line, written without allocating. Unwinding instead would run destructors that call into RocksDB,
// whose write path is not exception-safe: a refused allocation inside it has left a later write (the catalog's
// flush on close) waiting forever. The store is crash-safe, so stopping here is a kill -9 that says why.
void OnOutOfMemory() {
  static constexpr char kLine[] = "error: out of memory (the system refused an allocation)\n";
  static constexpr char kJson[] =
      "{\"error\":{\"code\":\"resource_exhausted\",\"message\":\"out of memory (the system refused an "
      "allocation)\",\"exit_code\":6}}\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, kLine, sizeof(kLine) - 1);
  if (g_json_errors) n = ::write(STDOUT_FILENO, kJson, sizeof(kJson) - 1);
  std::_Exit(6);
}

}  // namespace

// The libraries return errors as Status; what they cannot (an allocation that fails in the standard library or a
// dependency, a thread the system refuses) ends as one error line and exit 6, not an abort.
int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) g_json_errors = g_json_errors || std::string_view(argv[i]) == "--json";
  std::set_new_handler(OnOutOfMemory);
  try {
    const int code = Run(argc, argv);
    // Every store is closed by now (each command's objects live in Run). Skipping the static destructors keeps a
    // dependency's background threads, in a process that was refused memory or threads, from aborting after the
    // answer was given.
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(code);
  } catch (const std::bad_alloc&) {
    return es::cli::ExitCodeFor(es::Status::ResourceExhausted("out of memory"));
  } catch (const std::system_error& e) {
    return es::cli::ExitCodeFor(es::Status::ResourceExhausted(std::string("the system refused a resource: ") + e.what()));
  }
}

namespace {

int Run(int argc, char** argv) {
  std::vector<es::cli::Command> commands;
  es::cli::RegisterIngestCommands(commands);
  es::cli::RegisterStoreCommands(commands);
  es::cli::RegisterExpertCommands(commands);
  es::cli::RegisterGenerateCommands(commands);
  es::cli::RegisterChatCommands(commands);
  es::cli::RegisterBenchCommands(commands);
  es::cli::RegisterMetadataCommands(commands);
  es::cli::RegisterServeCommands(commands);
  es::cli::RegisterRemoteCommands(commands);

  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    PrintUsage(commands);
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  if (name == "--version" || name == "version") {
    std::printf("expertstore %s\nallocator: %.*s\n", es::cli::kVersion,
                static_cast<int>(es::ReadHeapStats().allocator.size()), es::ReadHeapStats().allocator.data());
    return 0;
  }
  std::vector<std::string> rest(argv + 2, argv + argc);
  // --json decides the error's form before the flags parse, so that a flag error is a JSON document too.
  const bool json = std::find(rest.begin(), rest.end(), "--json") != rest.end();
  for (const auto& c : commands) {
    if (c.name != name) continue;
    for (const auto& a : rest) {
      if (a == "--help" || a == "-h") {
        PrintCommandHelp(c);
        return 0;
      }
    }
    auto args = es::cli::Args::Parse(rest, c.flags);
    if (!args.ok()) return es::cli::ExitCodeFor(args.status(), c.flags, json);
    if (es::Status s = es::cli::CheckPositional(c, *args); !s.ok()) return es::cli::ExitCodeFor(s, c.flags, json);
    return es::cli::ExitCodeFor(c.run(*args), c.flags, json);
  }
  return es::cli::ExitCodeFor(
      es::Status::InvalidArgument("unknown command '" + name + "' (see expertstore --help)"), {}, json);
}

}  // namespace
