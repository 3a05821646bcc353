// Chat templates: a conversation as the prompt text a chat model was trained on, rendered from the model's own
// Hugging Face chat_template (tokenizer_config.json) by the Jinja subset in jinja.h. A model without one gets
// ChatML when its vocabulary has <|im_start|> and <|im_end|> (as llama.cpp falls back); otherwise NotSupported.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "compute/tokenizer/tokenizer.h"
#include "store/base/status.h"

namespace es {

// One message of a conversation: role "system", "user", "assistant" or "tool".
struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatTemplateOptions {
  // End with the opening of the assistant's turn, as transformers' add_generation_prompt.
  bool add_generation_prompt = true;
  // Passed to the template as enable_thinking when set (Qwen3's switch for its <think> block); undefined
  // otherwise, which such templates read as thinking on.
  std::optional<bool> enable_thinking;
};

// The template applied to one user message.
Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::string_view user_message);
// The template applied to a conversation, with the variables transformers passes: messages, bos_token and
// eos_token (the tokenizer's), add_generation_prompt; tools stays undefined. InvalidArgument when the template
// fails (its raise_exception message included), NotSupported when the model has no template and no ChatML
// tokens or the template uses Jinja beyond the subset.
Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                      const ChatTemplateOptions& options = {});

// Renders the chat template `source` the same way, for a template that is not the tokenizer's.
Result<std::string> RenderChatTemplate(std::string_view source, std::span<const ChatMessage> messages,
                                       std::optional<std::string_view> bos_token,
                                       std::optional<std::string_view> eos_token,
                                       const ChatTemplateOptions& options = {});

}  // namespace es
