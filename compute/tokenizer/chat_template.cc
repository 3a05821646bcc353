// Chat templates through the Jinja subset: the variables transformers' apply_chat_template passes, and the
// ChatML fallback for a model without a template.
#include "compute/tokenizer/chat_template.h"

#include <vector>

#include "compute/tokenizer/jinja.h"
#include "store/base/json.h"

namespace es {
namespace {

// ChatML, the Qwen format, for a tokenizer that has its tokens but no template of its own.
constexpr std::string_view kChatMlTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

}  // namespace

Result<std::string> RenderChatTemplate(std::string_view source, std::span<const ChatMessage> messages,
                                       std::optional<std::string_view> bos_token,
                                       std::optional<std::string_view> eos_token,
                                       const ChatTemplateOptions& options) {
  auto tmpl = jinja::Template::Parse(source);
  if (!tmpl.ok()) return tmpl.status().WithContext("chat template");
  std::vector<JsonValue> list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    list.push_back(
        JsonValue::Object({{"role", JsonValue::String(m.role)}, {"content", JsonValue::String(m.content)}}));
  }
  std::vector<JsonValue::Member> vars;
  vars.emplace_back("messages", JsonValue::Array(std::move(list)));
  vars.emplace_back("add_generation_prompt", JsonValue::Bool(options.add_generation_prompt));
  if (bos_token) vars.emplace_back("bos_token", JsonValue::String(std::string(*bos_token)));
  if (eos_token) vars.emplace_back("eos_token", JsonValue::String(std::string(*eos_token)));
  if (options.enable_thinking) vars.emplace_back("enable_thinking", JsonValue::Bool(*options.enable_thinking));
  auto text = tmpl->Render(JsonValue::Object(std::move(vars)));
  if (!text.ok()) return text.status().WithContext("chat template");
  return text;
}

Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::string_view user_message) {
  ChatMessage m{"user", std::string(user_message)};
  return ApplyChatTemplate(tokenizer, std::span<const ChatMessage>(&m, 1));
}

Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                      const ChatTemplateOptions& options) {
  std::string_view source = tokenizer.chat_template();
  if (source.empty()) {
    if (!tokenizer.TokenToId("<|im_start|>") || !tokenizer.TokenToId("<|im_end|>")) {
      return Status::NotSupported("this model has no chat template (tokenizer_config.json has no chat_template)");
    }
    source = kChatMlTemplate;
  }
  return RenderChatTemplate(source, messages, tokenizer.bos_token(), tokenizer.eos_token(), options);
}

}  // namespace es
