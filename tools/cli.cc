// CLI plumbing: argument parsing, exit codes, store opening.
#include "tools/cli.h"

#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace es::cli {

namespace {

const std::vector<FlagSpec>& GlobalSpecs() {
  static const std::vector<FlagSpec> specs = {
      {"store", true, "store directory (default ./expertstore-data)"},
      {"json", false, "print one JSON document on stdout"},
      {"quiet", false, "no progress output"},
      {"io-engine", true, "auto, uring or pread"},
  };
  return specs;
}

}  // namespace

std::optional<std::string> Args::Get(std::string_view flag) const {
  auto it = values_.find(std::string(flag));
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::GetOr(std::string_view flag, std::string_view fallback) const {
  auto v = Get(flag);
  return v ? *v : std::string(fallback);
}

Result<int64_t> Args::GetInt(std::string_view flag, int64_t fallback, int64_t min, int64_t max) const {
  auto v = Get(flag);
  if (!v) return fallback;
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || ptr != v->data() + v->size()) {
    return Status::InvalidArgument("--" + std::string(flag) + " expects an integer, got '" + *v + "'");
  }
  if (out < min || out > max) {
    return Status::InvalidArgument("--" + std::string(flag) + " must be between " + std::to_string(min) + " and " +
                                   std::to_string(max));
  }
  return out;
}

Result<double> Args::GetDouble(std::string_view flag, double fallback) const {
  auto v = Get(flag);
  if (!v) return fallback;
  double out = 0;
  auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || ptr != v->data() + v->size()) {
    return Status::InvalidArgument("--" + std::string(flag) + " expects a number, got '" + *v + "'");
  }
  return out;
}

Result<std::string> Args::Require(std::string_view flag) const {
  auto v = Get(flag);
  if (!v) return Status::InvalidArgument("missing required flag --" + std::string(flag));
  return *v;
}

Result<Args> Args::Parse(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs) {
  Args args;
  auto find = [&](std::string_view name) -> const FlagSpec* {
    for (const auto& s : specs) {
      if (s.name == name) return &s;
    }
    for (const auto& s : GlobalSpecs()) {
      if (s.name == name) return &s;
    }
    return nullptr;
  };
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() > 2 && a.starts_with("--")) {
      std::string name = a.substr(2);
      std::optional<std::string> value;
      if (size_t eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const FlagSpec* spec = find(name);
      if (spec == nullptr) return Status::InvalidArgument("unknown flag --" + name);
      if (spec->takes_value && !value) {
        if (i + 1 >= argv.size()) return Status::InvalidArgument("--" + name + " needs a value");
        value = argv[++i];
      }
      if (!spec->takes_value && value) return Status::InvalidArgument("--" + name + " takes no value");
      args.values_[name] = value.value_or("");
    } else {
      args.positional_.push_back(a);
    }
  }
  args.global_.store = args.GetOr("store", args.global_.store);
  args.global_.json = args.Has("json");
  args.global_.quiet = args.Has("quiet");
  args.global_.io_engine = args.GetOr("io-engine", args.global_.io_engine);
  return args;
}

int ExitCodeFor(const Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  switch (status.code()) {
    case Status::Code::kInvalidArgument: return 2;
    case Status::Code::kNotFound: return 3;
    case Status::Code::kCorruption: return 4;
    case Status::Code::kBusy: return 5;
    case Status::Code::kResourceExhausted: return 6;
    case Status::Code::kNotSupported: return 7;
    default: return 1;
  }
}

Result<std::unique_ptr<Store>> OpenStore(const Args& args, bool writer, bool create) {
  StoreOptions options;
  options.read_only = !writer;
  options.create_if_missing = create;
  ES_ASSIGN_OR_RETURN(options.io_engine, ParseIoEngineKind(args.global().io_engine));
  auto store = Store::Open(args.global().store, options);
  if (!store.ok() && store.status().IsBusy()) {
    return Status::Busy("the store at " + args.global().store + " is held by another writer process");
  }
  return store;
}

void PrintJson(const JsonWriter& writer) {
  std::fwrite(writer.str().data(), 1, writer.str().size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

bool ShowProgress(const Args& args) { return !args.global().quiet && ::isatty(STDERR_FILENO); }

}  // namespace es::cli
