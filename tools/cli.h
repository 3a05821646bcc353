// The expertstore CLI's shared plumbing: flag parsing, the one Status -> exit code mapping, JSON output,
// opening the store. Each subcommand group lives in its own cli_*.cc file and registers its commands here.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/cache_size.h"
#include "store/base/json.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es::cli {

// The version `--version` and `info` print.
inline constexpr char kVersion[] = "0.1.0";

// Flags every command accepts.
struct GlobalFlags {
  std::string store = "./expertstore-data";
  bool json = false;
  bool quiet = false;
  std::string io_engine = "auto";
  bool read_only = false;  // --read-only: open the store read-only whatever the file system allows
  double local_cache_gb = 0;  // --local-cache-gb: local copies of attached models' records (remote/warm_tier.h)
};

struct FlagSpec {
  std::string name;       // without the leading "--"
  bool takes_value = true;
  std::string help;
};

// Parsed arguments of one command.
class Args {
 public:
  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(std::string_view flag) const { return values_.count(std::string(flag)) > 0; }
  std::optional<std::string> Get(std::string_view flag) const;
  // Every value a repeatable flag was given, in order (--stop A --stop B); Get gives the last.
  std::vector<std::string> GetAll(std::string_view flag) const;
  std::string GetOr(std::string_view flag, std::string_view fallback) const;
  // Typed accessors: InvalidArgument naming the flag when the value does not parse or is out of range.
  Result<int64_t> GetInt(std::string_view flag, int64_t fallback, int64_t min, int64_t max) const;
  Result<double> GetDouble(std::string_view flag, double fallback) const;
  Result<std::string> Require(std::string_view flag) const;

  const GlobalFlags& global() const { return global_; }

  // Parses argv after the command name against `specs` plus the global flags.
  static Result<Args> Parse(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs);

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> all_values_;
  GlobalFlags global_;
};

struct Command {
  std::string name;
  std::string usage;    // "verify [--model M]"
  std::string summary;  // one line
  std::vector<FlagSpec> flags;
  std::function<Status(const Args&)> run;
  size_t max_positional = 0;  // arguments that are not flags (ingest's DIR); more are refused
};

// Registration: each cli_*.cc defines one function adding its commands.
void RegisterStoreCommands(std::vector<Command>& commands);
void RegisterIngestCommands(std::vector<Command>& commands);
void RegisterExpertCommands(std::vector<Command>& commands);
void RegisterGenerateCommands(std::vector<Command>& commands);
void RegisterRemoteCommands(std::vector<Command>& commands);
void RegisterChatCommands(std::vector<Command>& commands);
void RegisterBenchCommands(std::vector<Command>& commands);
void RegisterMetadataCommands(std::vector<Command>& commands);
void RegisterServeCommands(std::vector<Command>& commands);

// InvalidArgument for more positional arguments than `command` takes, naming the first extra one; one that starts
// with a single '-' ("-m") is an unknown flag (flags are long: --model).
Status CheckPositional(const Command& command, const Args& args);

// The single place a Status becomes an exit code (0 for OK) and an "error: ..." line on stderr. The libraries name
// the options at fault by their fields, in backquotes (`cache_pct`); each that one of `flags` (or a global flag)
// sets is printed as that flag (--cache-pct).
// With `json` (--json) the error is also one document on stdout, {"error": {"code", "message", "exit_code"}}, so
// that a script reading stdout always gets exactly one JSON document.
int ExitCodeFor(const Status& status, const std::vector<FlagSpec>& flags = {}, bool json = false);

// The option field a flag sets: its name with '_' for '-' ("top-k" -> "top_k").
std::string FieldOfFlag(std::string_view flag);
// `message` with every backquoted field that one of `flags` (or a global flag) sets written as that flag.
std::string WithFlagNames(std::string_view message, const std::vector<FlagSpec>& flags);

// The cache size --PREFIX-mb or --PREFIX-pct give ("cache", "gpu-cache"): each parsed, neither checked against
// the other (ValidateCacheSize does that, naming the fields).
Result<CacheSize> CacheSizeFromFlags(const Args& args, std::string_view prefix);

// False when this process cannot or may not write the store at --store (a read-only mount or snapshot, no write
// permission, --read-only): read commands then open it read-only and do not record usage. True for a store that
// does not exist yet.
bool StoreWritable(const Args& args);

// Opens the store named by --store. Writers take the lock; readers open beside a running writer. A writer on a
// store that is not writable gets NotSupported saying so.
Result<std::unique_ptr<Store>> OpenStore(const Args& args, bool writer, bool create = false);
// --local-cache-gb in bytes.
uint64_t LocalCacheBytes(const Args& args);

// Prints a JSON document as the only thing on stdout.
void PrintJson(const JsonWriter& writer);

// True when progress output should be drawn (stderr is a terminal and --quiet was not given).
bool ShowProgress(const Args& args);

// A one-line progress bar on stderr (bytes done, rate, ETA), redrawn at most a few times a second; silent
// when ShowProgress is false. Not thread-safe.
class ProgressBar {
 public:
  ProgressBar(const Args& args, std::string label);
  ~ProgressBar();
  void Update(uint64_t done, uint64_t total);
  // Clears the line.
  void Finish();

 private:
  bool enabled_;
  std::string label_;
  double start_;
  double last_draw_ = 0;
  bool drawn_ = false;
};

// Peak resident set size of this process so far, in bytes.
uint64_t PeakRssBytes();

// "12.3 MiB", "4.0 GiB".
std::string HumanBytes(uint64_t bytes);

// "2026-12-06 04:31:39 UTC".
std::string UtcTime(uint64_t unix_seconds);

}  // namespace es::cli
