// StopFilter: holds back generated text that may be the start of a stop sequence and cuts the output where one
// appears, so that a stop string never reaches the user, not even in part. generate, chat and the HTTP
// completions share it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace es {

// Holds back generated text that may be the start of a stop sequence, and cuts the output where one appears.
// Not thread-safe.
class StopFilter {
 public:
  explicit StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Takes the next piece of generated text; returns what can be shown now (never part of a stop sequence).
  // After a stop sequence has been seen, returns the text before it once and then nothing.
  std::string Push(std::string_view text);
  bool stopped() const { return stopped_; }
  // The text held back, at the end of a generation that met no stop sequence.
  std::string Flush();

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace es
