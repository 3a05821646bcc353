// libFuzzer target: the Jinja subset on arbitrary template text, rendered with a fixed conversation (tools and
// tool calls included) under small limits. Besides ASan/UBSan it checks that a failure is a Status and that an
// output never exceeds the output limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "compute/tokenizer/jinja.h"
#include "store/base/json.h"

namespace {

constexpr std::string_view kVariables = R"({
  "messages": [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "hi <think>x</think> y"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
      "function": {"name": "f", "arguments": {"a": [1, 2.5, null, true]}}}]},
    {"role": "tool", "content": "r"}],
  "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
  "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const es::JsonValue* variables = new es::JsonValue(*es::ParseJson(kVariables));
  es::jinja::Limits limits;
  limits.max_steps = 20000;
  limits.max_output_bytes = 1 << 16;
  auto t = es::jinja::Template::Parse(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!t.ok()) return 0;
  auto out = t->Render(*variables);
  if (out.ok() && out->size() > limits.max_output_bytes) std::abort();
  return 0;
}
