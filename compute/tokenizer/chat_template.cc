// The ChatML template.
#include "compute/tokenizer/chat_template.h"

namespace es {

Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::string_view user_message) {
  ChatMessage m{"user", std::string(user_message)};
  return ApplyChatTemplate(tokenizer, std::span<const ChatMessage>(&m, 1));
}

Result<std::string> ApplyChatTemplate(const Tokenizer& tokenizer, std::span<const ChatMessage> messages) {
  if (!tokenizer.TokenToId("<|im_start|>") || !tokenizer.TokenToId("<|im_end|>")) {
    return Status::NotSupported("`chat` uses the Qwen (ChatML) template, and this tokenizer has no <|im_start|>");
  }
  std::string text;
  for (const ChatMessage& m : messages) text += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  return text + "<|im_start|>assistant\n";
}

}  // namespace es
