// A Jinja renderer for the subset Hugging Face chat templates use (tokenizer_config.json's chat_template), in
// Hugging Face's environment: trim_blocks and lstrip_blocks on, a single trailing newline dropped, loop controls
// (break, continue), and the globals raise_exception, namespace, range and strftime_now. Templates come from
// files a user ingested, so parsing and rendering are bounded (template size, nesting, call depth, work and
// output size) and every failure is a Status naming the line and column; nothing throws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "store/base/json.h"
#include "store/base/status.h"

namespace es::jinja {

struct Limits {
  size_t max_template_bytes = 1u << 20;
  // Nesting of blocks and of expressions in the parser, and of macro calls when rendering.
  int max_nesting = 128;
  int max_call_depth = 64;
  // Statements executed, loop iterations and list elements built, in all: a bound on work, so a template's
  // nested loops cannot run for minutes.
  uint64_t max_steps = 4'000'000;
  // Any string built while rendering (the output, a captured block, a concatenation).
  size_t max_output_bytes = 8u << 20;
};

struct Program;  // the parsed template

// A parsed template. Immutable once parsed; Render may be called from several threads at once.
class Template {
 public:
  // InvalidArgument for a syntax error, NotSupported for a Jinja construct outside the subset, each naming the
  // line and column; ResourceExhausted past a limit.
  static Result<Template> Parse(std::string_view source, const Limits& limits = {});

  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  ~Template();

  // Renders with the members of `variables` (a JSON object) as the template's variables; a name it lacks is
  // undefined. InvalidArgument for a runtime error (raise_exception's message included), ResourceExhausted past
  // a limit.
  Result<std::string> Render(const JsonValue& variables) const;

 private:
  explicit Template(std::shared_ptr<const Program> program);
  std::shared_ptr<const Program> program_;
};

}  // namespace es::jinja
