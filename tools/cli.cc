// CLI plumbing: argument parsing, exit codes, store opening.
#include "tools/cli.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>

#include "remote/tier.h"

namespace es::cli {

namespace {

const std::vector<FlagSpec>& GlobalSpecs() {
  static const std::vector<FlagSpec> specs = {
      {"store", true, "store directory (default ./expertstore-data)"},
      {"json", false, "print one JSON document on stdout"},
      {"quiet", false, "no progress output"},
      {"io-engine", true, "auto, uring or pread"},
      {"read-only", false, "open the store read-only (as on a read-only mount): reads work, nothing is recorded"},
      {"local-cache-gb", true, "keep local copies of up to this many GB of the records models attached from a "
                               "RADOS pool read (default 0: none)"},
  };
  return specs;
}

}  // namespace

std::optional<std::string> Args::Get(std::string_view flag) const {
  auto it = values_.find(std::string(flag));
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> Args::GetAll(std::string_view flag) const {
  auto it = all_values_.find(std::string(flag));
  return it == all_values_.end() ? std::vector<std::string>() : it->second;
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
      args.all_values_[name].push_back(value.value_or(""));
    } else {
      args.positional_.push_back(a);
    }
  }
  args.global_.store = args.GetOr("store", args.global_.store);
  args.global_.json = args.Has("json");
  args.global_.quiet = args.Has("quiet");
  args.global_.io_engine = args.GetOr("io-engine", args.global_.io_engine);
  args.global_.read_only = args.Has("read-only");
  ES_ASSIGN_OR_RETURN(args.global_.local_cache_gb, args.GetDouble("local-cache-gb", 0));
  if (!(args.global_.local_cache_gb >= 0) || args.global_.local_cache_gb > 1e6) {
    return Status::InvalidArgument("--local-cache-gb must be between 0 and 1000000");
  }
  return args;
}

Status CheckPositional(const Command& command, const Args& args) {
  const auto& pos = args.positional();
  for (size_t i = 0; i < pos.size(); ++i) {
    const std::string& a = pos[i];
    if (a.size() > 1 && a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')) {
      return Status::InvalidArgument("unknown flag " + a + " (flags are long: --model, --prompt; see expertstore " +
                                     command.name + " --help)");
    }
    if (i >= command.max_positional) {
      return Status::InvalidArgument("unexpected argument '" + a + "' (see expertstore " + command.name + " --help)");
    }
  }
  return Status::Ok();
}

std::string FieldOfFlag(std::string_view flag) {
  std::string field(flag);
  for (char& c : field) {
    if (c == '-') c = '_';
  }
  return field;
}

std::string WithFlagNames(std::string_view message, const std::vector<FlagSpec>& flags) {
  auto flag_for = [&](std::string_view field) -> const FlagSpec* {
    for (const auto* specs : {&flags, &GlobalSpecs()}) {
      for (const FlagSpec& f : *specs) {
        if (FieldOfFlag(f.name) == field) return &f;
      }
    }
    return nullptr;
  };
  std::string out;
  size_t pos = 0;
  while (pos < message.size()) {
    const size_t open = message.find('`', pos);
    const size_t close = open == std::string_view::npos ? open : message.find('`', open + 1);
    if (close == std::string_view::npos) break;
    out.append(message.substr(pos, open - pos));
    const std::string_view field = message.substr(open + 1, close - open - 1);
    if (const FlagSpec* f = flag_for(field)) {
      out += "--" + f->name;
    } else {
      out.append(message.substr(open, close - open + 1));
    }
    pos = close + 1;
  }
  out.append(message.substr(pos));
  return out;
}

int ExitCodeFor(const Status& status, const std::vector<FlagSpec>& flags, bool json) {
  if (status.ok()) return 0;
  const std::string message = WithFlagNames(status.message(), flags);
  std::fprintf(stderr, "error: %s\n", message.c_str());
  int code = 1;
  switch (status.code()) {
    case Status::Code::kInvalidArgument: code = 2; break;
    case Status::Code::kNotFound: code = 3; break;
    case Status::Code::kCorruption: code = 4; break;
    case Status::Code::kBusy: code = 5; break;
    case Status::Code::kResourceExhausted: code = 6; break;
    case Status::Code::kNotSupported: code = 7; break;
    default: break;
  }
  if (json) {
    JsonWriter w;
    w.BeginObject().Key("error").BeginObject()
        .Key("code").String(StatusCodeSlug(status.code()))
        .Key("message").String(message)
        .Key("exit_code").Int(code)
        .EndObject().EndObject();
    PrintJson(w);
  }
  return code;
}

Result<CacheSize> CacheSizeFromFlags(const Args& args, std::string_view prefix) {
  CacheSize size;
  const std::string mb_flag = std::string(prefix) + "-mb";
  const std::string pct_flag = std::string(prefix) + "-pct";
  if (args.Has(mb_flag)) {
    ES_ASSIGN_OR_RETURN(int64_t mb, args.GetInt(mb_flag, 0, 1, static_cast<int64_t>(kMaxCacheMb)));
    size.mb = static_cast<uint64_t>(mb);
  }
  if (args.Has(pct_flag)) {
    ES_ASSIGN_OR_RETURN(size.pct, args.GetDouble(pct_flag, 0));
  }
  return size;
}

bool StoreWritable(const Args& args) {
  if (args.global().read_only) return false;
  const std::string& path = args.global().store;
  for (const std::string& p : {path, path + "/catalog"}) {
    if (::access(p.c_str(), W_OK) != 0 && errno != ENOENT) return false;
  }
  return true;
}

uint64_t LocalCacheBytes(const Args& args) { return static_cast<uint64_t>(args.global().local_cache_gb * 1e9); }

Result<std::unique_ptr<Store>> OpenStore(const Args& args, bool writer, bool create) {
  if (writer && !StoreWritable(args)) {
    return Status::NotSupported("the store at " + args.global().store +
                                (args.global().read_only ? " is opened with --read-only"
                                                         : " is read-only (a read-only mount or no write permission)") +
                                ", and this command writes to it");
  }
  StoreOptions options;
  options.read_only = !writer;
  options.create_if_missing = create;
  ES_ASSIGN_OR_RETURN(options.io_engine, ParseIoEngineKind(args.global().io_engine));
  auto store = Store::Open(args.global().store, options);
  if (!store.ok() && store.status().IsBusy()) {
    return Status::Busy("the store at " + args.global().store + " is held by another writer process");
  }
  // Models attached from a RADOS pool read their records through it (connecting on the first read).
  if (store.ok()) ES_RETURN_IF_ERROR(remote::ConnectTiers(**store, LocalCacheBytes(args)).status());
  return store;
}

void PrintJson(const JsonWriter& writer) {
  std::fwrite(writer.str().data(), 1, writer.str().size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

bool ShowProgress(const Args& args) { return !args.global().quiet && ::isatty(STDERR_FILENO); }

namespace {
double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
constexpr double kRedrawSeconds = 0.2;
constexpr int kBarWidth = 30;
}  // namespace

ProgressBar::ProgressBar(const Args& args, std::string label)
    : enabled_(ShowProgress(args)), label_(std::move(label)), start_(NowSeconds()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  double now = NowSeconds();
  if (now - last_draw_ < kRedrawSeconds && done < total) return;
  last_draw_ = now;
  double frac = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  int filled = static_cast<int>(frac * kBarWidth);
  double elapsed = now - start_;
  double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kBarWidth, '.');
  std::fprintf(stderr, "\r%s [%s] %s / %s  %s/s  ETA %.0fs  ", label_.c_str(), bar.c_str(), HumanBytes(done).c_str(),
               HumanBytes(total).c_str(), HumanBytes(static_cast<uint64_t>(rate)).c_str(), eta);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

uint64_t PeakRssBytes() {
  struct rusage usage;
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // ru_maxrss is in KiB on Linux
}

std::string UtcTime(uint64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return text;
}

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace es::cli
