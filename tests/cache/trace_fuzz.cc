// libFuzzer target for the routing-trace parser (cache/trace.h); the input is a whole trace file. An accepted trace has
// one step per line holding anything but blanks (' ', '\t', '\r'), each with a non-empty list of distinct experts and
// either no weights or one finite weight per expert; each of those lines parsed alone gives its step; the writer's
// lines parse back to the same steps and are rewritten identically. A rejected trace is InvalidArgument naming a line
// N that exists, the lines before N parse, and line N alone fails. Built with ES_FUZZ=ON; seeds in trace_fuzz_corpus/.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "cache/trace.h"

namespace {

constexpr std::string_view kBlanks = " \t\r";
constexpr std::string_view kLinePrefix = "trace line ";

void Check(bool condition) {
  if (!condition) __builtin_trap();
}

bool SameStep(const es::TraceStep& a, const es::TraceStep& b) {
  return a.token == b.token && a.layer == b.layer && a.experts == b.experts && a.weights == b.weights;
}

bool SameTrace(const std::vector<es::TraceStep>& a, const std::vector<es::TraceStep>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!SameStep(a[i], b[i])) return false;
  }
  return true;
}

// The input's lines as a reader of the format sees them: split at '\n', no empty line after a final newline.
std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return lines;
}

bool IsBlank(std::string_view line) { return line.find_first_not_of(kBlanks) == std::string_view::npos; }

void CheckStep(const es::TraceStep& s) {
  Check(!s.experts.empty());
  std::unordered_set<uint32_t> distinct(s.experts.begin(), s.experts.end());
  Check(distinct.size() == s.experts.size());
  Check(s.weights.empty() || s.weights.size() == s.experts.size());
  for (double w : s.weights) Check(std::isfinite(w));
}

std::string Write(const std::vector<es::TraceStep>& steps) {
  std::string text;
  for (const es::TraceStep& s : steps) {
    std::string line = es::FormatTraceLine(s);
    Check(line.find('\n') == std::string::npos);
    text += line;
    text += '\n';
  }
  return text;
}

void CheckAccepted(const std::vector<es::TraceStep>& steps, const std::vector<std::string_view>& lines) {
  size_t next = 0;
  for (std::string_view line : lines) {
    if (IsBlank(line)) continue;
    Check(next < steps.size());
    es::Result<std::vector<es::TraceStep>> alone = es::ParseTrace(line);
    Check(alone.ok() && alone->size() == 1);
    Check(SameStep((*alone)[0], steps[next]));
    ++next;
  }
  Check(next == steps.size());
  for (const es::TraceStep& s : steps) CheckStep(s);

  const std::string written = Write(steps);
  es::Result<std::vector<es::TraceStep>> back = es::ParseTrace(written);
  Check(back.ok());
  Check(SameTrace(*back, steps));
  Check(Write(*back) == written);
}

// The 1-based line number after "trace line ", or 0 when the message does not start with one.
size_t NamedLine(std::string_view message) {
  if (message.substr(0, kLinePrefix.size()) != kLinePrefix) return 0;
  size_t n = 0;
  for (size_t i = kLinePrefix.size(); i < message.size() && message[i] >= '0' && message[i] <= '9'; ++i) {
    n = n * 10 + static_cast<size_t>(message[i] - '0');
  }
  return n;
}

void CheckRejected(const es::Status& status, std::string_view text, const std::vector<std::string_view>& lines) {
  Check(status.IsInvalidArgument());
  const size_t n = NamedLine(status.message());
  Check(n >= 1 && n <= lines.size());
  const std::string_view bad = lines[n - 1];
  Check(!IsBlank(bad));
  const size_t before = static_cast<size_t>(bad.data() - text.data());
  Check(es::ParseTrace(text.substr(0, before)).ok());
  Check(!es::ParseTrace(bad).ok());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string_view> lines = SplitLines(text);
  es::Result<std::vector<es::TraceStep>> steps = es::ParseTrace(text);
  if (steps.ok()) {
    CheckAccepted(*steps, lines);
  } else {
    CheckRejected(steps.status(), text, lines);
  }
  return 0;
}
