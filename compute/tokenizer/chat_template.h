// Chat templates: a conversation as the prompt text a chat model was trained on. The Qwen (ChatML) template is the
// one implemented: each message as <|im_start|>role\ncontent<|im_end|>\n, then the assistant's turn.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "compute/tokenizer/tokenizer.h"
#include "store/base/status.h"

namespace es {

// One message of a conversation: role "system", "user" or "assistant".
struct ChatMessage {
  std::string role;
  std::string content;
};

// The ChatML template for one user message; NotSupported when the tokenizer lacks <|im_start|> or <|im_end|>.
Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::string_view user_message);
// The same for a conversation.
Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::span<const ChatMessage> messages);

}  // namespace es
