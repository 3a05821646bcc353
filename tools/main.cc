// expertstore: the command-line entry point. Dispatches to the subcommands registered by the cli_*.cc files.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "tools/cli.h"

namespace {

void PrintUsage(const std::vector<es::cli::Command>& commands) {
  std::fprintf(stderr, "usage: expertstore COMMAND [flags]  (global: --store DIR --json --quiet --io-engine E; --version)\n\n");
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

int main(int argc, char** argv) {
  std::vector<es::cli::Command> commands;
  es::cli::RegisterIngestCommands(commands);
  es::cli::RegisterStoreCommands(commands);
  es::cli::RegisterExpertCommands(commands);
  es::cli::RegisterGenerateCommands(commands);
  es::cli::RegisterChatCommands(commands);
  es::cli::RegisterBenchCommands(commands);
  es::cli::RegisterMetadataCommands(commands);
  es::cli::RegisterServeCommands(commands);

  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    PrintUsage(commands);
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  if (name == "--version" || name == "version") {
    std::printf("expertstore %s\n", es::cli::kVersion);
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
