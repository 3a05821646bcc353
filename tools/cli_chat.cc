// chat: a conversation with a model in the terminal, in the model's own chat template, streaming each reply.
// Works in a pipe too: each input line is a user message, each reply is printed followed by a newline.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "compute/generator.h"
#include "compute/stop_filter.h"
#include "tools/cli.h"
#include "tools/cli_runtime.h"

namespace es::cli {

namespace {

constexpr char kChatHelp[] =
    "type a message and press Enter (end a line with \\ to continue it); /reset starts over, /exit or Ctrl-D quits";

// One user message from standard input: a line, or several joined where a line ends in a backslash. nullopt at
// the end of the input.
std::optional<std::string> ReadMessage(bool interactive) {
  std::string message, line;
  if (interactive) std::fputs("> ", stdout), std::fflush(stdout);
  while (std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\\') {
      message += line.substr(0, line.size() - 1) + "\n";
      if (interactive) std::fputs(". ", stdout), std::fflush(stdout);
      continue;
    }
    return message + line;
  }
  if (!message.empty()) return message;
  return std::nullopt;
}

Status RunChat(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, RuntimeOptions{.need_tokenizer = true, .record = true}));
  ES_ASSIGN_OR_RETURN(DecodeSettings d, DecodeSettingsFromArgs(args, *rt));
  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  const std::string system = args.GetOr("system", "");
  std::vector<ChatMessage> messages;
  auto reset = [&] {
    messages.clear();
    if (!system.empty()) messages.push_back({"system", system});
  };
  reset();
  if (!args.global().quiet && interactive) std::fprintf(stderr, "%s\n", kChatHelp);
  Status last = Status::Ok();
  for (uint64_t turn = 0;; ++turn) {
    std::optional<std::string> input = ReadMessage(interactive);
    if (!input) break;
    if (*input == "/exit" || *input == "/quit") break;
    if (*input == "/reset") {
      reset();
      if (interactive) std::fprintf(stderr, "(the conversation starts over)\n");
      continue;
    }
    if (*input == "/help") {
      std::fprintf(stderr, "%s\n", kChatHelp);
      continue;
    }
    if (input->empty()) continue;
    messages.push_back({"user", *input});
    GenerateOptions o = d.options;
    o.sampler.seed += turn;  // each reply its own draw, reproducible under --seed
    StopFilter filter(d.stop);
    o.should_stop = [&] { return filter.stopped(); };
    std::string reply;
    auto show = [&](std::string_view piece) {
      reply += piece;
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    auto r = GenerateChat(rt->model(), rt->tokenizer(), rt->experts(), messages, o,
                          [&](std::string_view piece) { show(filter.Push(piece)); });
    if (!r.ok()) {
      // The turn is dropped; the conversation so far stays (context full: /reset).
      messages.pop_back();
      last = r.status();
      std::fprintf(stderr, "error: %s%s\n", WithFlagNames(r.status().message(), {}).c_str(),
                   r.status().IsInvalidArgument() ? " (/reset starts a new conversation)" : "");
      continue;
    }
    show(filter.Flush());
    std::fputs("\n", stdout);
    std::fflush(stdout);
    messages.push_back({"assistant", reply});
    if (!args.global().quiet && interactive) {
      std::fprintf(stderr, "[%zu tokens at %.1f tok/s; %s]\n", r->ids.size(), r->decode_tokens_per_second(),
                   filter.stopped() ? "stop" : r->finish_reason.c_str());
    }
  }
  ES_RETURN_IF_ERROR(rt->FinishRecording());
  return last;
}

}  // namespace

void RegisterChatCommands(std::vector<Command>& commands) {
  std::vector<FlagSpec> flags = {{"model", true, "model name"},
                                 {"system", true, "the system prompt"}};
  for (const auto& specs : {DecodeFlags(), RuntimeFlags()}) flags.insert(flags.end(), specs.begin(), specs.end());
  commands.push_back({"chat", "chat --model M [--system TEXT] [--temperature --max-tokens --ctx-size --stop ...]",
                      "a conversation in the terminal in the model's chat template (a pipe works too: a message a line)",
                      flags, RunChat});
}

}  // namespace es::cli
