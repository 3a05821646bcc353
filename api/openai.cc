// OpenAI request parsing, response formatting and the stop-sequence filter.
#include "api/openai.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "store/base/json.h"

namespace es::api {

namespace {

// OpenAI's documented ranges.
constexpr double kMaxTemperature = 2.0;
constexpr uint64_t kMaxTopK = 1u << 20;

// A field that is present and not null.
const JsonValue* Field(const JsonValue& obj, std::string_view name) {
  const JsonValue* v = obj.Find(name);
  return v != nullptr && !v->is_null() ? v : nullptr;
}

Status WrongType(std::string_view field, std::string_view expected) {
  return Status::InvalidArgument("'" + std::string(field) + "' must be " + std::string(expected));
}

Result<double> NumberField(const JsonValue& obj, std::string_view name, double fallback, double min, double max,
                           bool min_exclusive = false) {
  const JsonValue* v = Field(obj, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) return WrongType(name, "a number");
  ES_ASSIGN_OR_RETURN(double d, v->AsDouble());
  if (!std::isfinite(d) || d > max || d < min || (min_exclusive && d == min)) {
    return Status::InvalidArgument("'" + std::string(name) + "' is out of range");
  }
  return d;
}

// A feature this server does not implement is refused only when the request actually asks for it: clients send
// the neutral values (n: 1, logprobs: false, presence_penalty: 0) by default.
Status RefuseUnlessNeutral(const JsonValue& obj) {
  if (const JsonValue* f = Field(obj, "response_format")) {
    // Only plain text: a JSON mode or schema would need constrained decoding, and ignoring it silently would hand
    // the client text it cannot parse.
    const JsonValue* type = f->is_object() ? Field(*f, "type") : nullptr;
    if (type == nullptr || !type->is_string()) return WrongType("response_format", "an object with a string 'type'");
    if (type->string_value() != "text") {
      return Status::NotSupported("'response_format' " + type->string_value() + " is not supported; only text");
    }
  }
  for (std::string_view name : {"echo"}) {
    if (const JsonValue* p = Field(obj, name)) {
      bool neutral = (p->is_bool() && !p->bool_value()) || (p->is_integer() && p->AsInt64().ok() && *p->AsInt64() == 0);
      if (!neutral) return Status::NotSupported("'" + std::string(name) + "' is not supported");
    }
  }
  if (const JsonValue* b = Field(obj, "logit_bias")) {
    if (!b->is_object()) return WrongType("logit_bias", "an object");
    if (!b->object().empty()) return Status::NotSupported("'logit_bias' is not supported");
  }
  for (std::string_view name : {"tools", "functions", "suffix", "best_of"}) {
    if (const JsonValue* p = Field(obj, name)) {
      bool empty = (p->is_array() && p->array().empty()) || (p->is_string() && p->string_value().empty()) ||
                   (name == "best_of" && p->is_integer() && p->AsInt64().ok() && *p->AsInt64() == 1);
      if (!empty) return Status::NotSupported("'" + std::string(name) + "' is not supported");
    }
  }
  return Status::Ok();
}

Result<std::string> MessageContent(const JsonValue& content, size_t index) {
  std::string where = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) return content.string_value();
  // The newer form: an array of parts, of which this server reads the text ones.
  if (!content.is_array()) return WrongType(where, "a string or an array of text parts");
  std::string text;
  for (const JsonValue& part : content.array()) {
    const JsonValue* type = part.is_object() ? Field(part, "type") : nullptr;
    if (type == nullptr || !type->is_string()) return WrongType(where, "an array of {\"type\": \"text\", \"text\": ...}");
    if (type->string_value() != "text") {
      return Status::NotSupported(where + ": only text parts are supported, not '" + type->string_value() + "'");
    }
    const JsonValue* t = Field(part, "text");
    if (t == nullptr || !t->is_string()) return WrongType(where + "[].text", "a string");
    text += t->string_value();
  }
  return text;
}

Status ParseMessages(const JsonValue& root, const CompletionLimits& limits, CompletionRequest& r) {
  const JsonValue* messages = Field(root, "messages");
  if (messages == nullptr) return Status::InvalidArgument("'messages' is required");
  if (!messages->is_array()) return WrongType("messages", "an array");
  if (messages->array().empty()) return Status::InvalidArgument("'messages' is empty");
  if (messages->array().size() > limits.max_messages) {
    return Status::InvalidArgument("'messages' holds more than " + std::to_string(limits.max_messages) + " messages");
  }
  for (size_t i = 0; i < messages->array().size(); ++i) {
    const JsonValue& m = messages->array()[i];
    std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return WrongType(where, "an object");
    const JsonValue* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) return WrongType(where + ".role", "a string");
    const std::string& rv = role->string_value();
    // "developer" is OpenAI's newer name for "system".
    if (rv != "system" && rv != "user" && rv != "assistant" && rv != "developer") {
      return Status::InvalidArgument(where + ".role must be system, user or assistant, not '" + rv + "'");
    }
    const JsonValue* content = Field(m, "content");
    if (content == nullptr) return Status::InvalidArgument(where + ".content is required");
    ES_ASSIGN_OR_RETURN(std::string text, MessageContent(*content, i));
    r.messages.push_back({rv == "developer" ? "system" : rv, std::move(text)});
  }
  return Status::Ok();
}

Status ParsePrompt(const JsonValue& root, CompletionRequest& r) {
  const JsonValue* prompt = Field(root, "prompt");
  if (prompt == nullptr) return Status::InvalidArgument("'prompt' is required");
  if (prompt->is_string()) {
    r.prompt = prompt->string_value();
  } else if (prompt->is_array()) {
    const auto& items = prompt->array();
    if (items.size() == 1 && items[0].is_string()) {
      r.prompt = items[0].string_value();
    } else if (!items.empty() && std::all_of(items.begin(), items.end(), [](const JsonValue& v) { return v.is_integer(); })) {
      return Status::NotSupported("token-id prompts are not supported; send the prompt as text");
    } else if (items.size() > 1 && std::all_of(items.begin(), items.end(), [](const JsonValue& v) { return v.is_string(); })) {
      return Status::NotSupported("batched prompts are not supported; send one prompt per request");
    } else {
      return WrongType("prompt", "a string");
    }
  } else {
    return WrongType("prompt", "a string");
  }
  if (r.prompt.empty()) return Status::InvalidArgument("'prompt' is empty");
  return Status::Ok();
}

Status ParseStop(const JsonValue& root, const CompletionLimits& limits, CompletionRequest& r) {
  const JsonValue* stop = Field(root, "stop");
  if (stop == nullptr) return Status::Ok();
  std::vector<const JsonValue*> items;
  if (stop->is_string()) {
    items.push_back(stop);
  } else if (stop->is_array()) {
    if (stop->array().size() > limits.max_stop_sequences) {
      return Status::InvalidArgument("'stop' holds more than " + std::to_string(limits.max_stop_sequences) + " sequences");
    }
    for (const JsonValue& s : stop->array()) items.push_back(&s);
  } else {
    return WrongType("stop", "a string or an array of strings");
  }
  for (const JsonValue* s : items) {
    if (!s->is_string()) return WrongType("stop", "a string or an array of strings");
    if (s->string_value().size() > limits.max_stop_bytes) {
      return Status::InvalidArgument("a stop sequence is longer than " + std::to_string(limits.max_stop_bytes) + " bytes");
    }
    if (!s->string_value().empty()) r.stop.push_back(s->string_value());
  }
  return Status::Ok();
}

// The sampling fields with a float value: each given one is range-checked and set.
Status ParseSampling(const JsonValue& root, SamplerRequest& s) {
  struct FloatField {
    std::string_view name;
    double fallback, min, max;
    bool min_exclusive;
    std::optional<float>* out;
  };
  const FloatField fields[] = {
      {"temperature", 0, 0, kMaxTemperature, false, &s.temperature},
      {"top_p", 1, 0, 1, true, &s.top_p},
      {"min_p", 0, 0, 1, false, &s.min_p},
      {"presence_penalty", 0, -kMaxAbsPenalty, kMaxAbsPenalty, false, &s.presence_penalty},
      {"frequency_penalty", 0, -kMaxAbsPenalty, kMaxAbsPenalty, false, &s.frequency_penalty},
      {"repetition_penalty", 1, 0, kMaxRepetitionPenalty, true, &s.repetition_penalty},
      {"repeat_penalty", 1, 0, kMaxRepetitionPenalty, true, &s.repetition_penalty},  // llama-server's name
  };
  for (const FloatField& f : fields) {
    if (Field(root, f.name) == nullptr) continue;
    ES_ASSIGN_OR_RETURN(double v, NumberField(root, f.name, f.fallback, f.min, f.max, f.min_exclusive));
    *f.out = static_cast<float>(v);
  }
  if (const JsonValue* n = Field(root, "repeat_last_n")) {
    auto v = n->is_integer() ? n->AsInt64() : Result<int64_t>(Status::InvalidArgument(""));
    if (!v.ok() || *v < 0 || *v > static_cast<int64_t>(kMaxTopK)) {
      return Status::InvalidArgument("'repeat_last_n' must be an integer between 0 and " + std::to_string(kMaxTopK));
    }
    s.penalty_last_n = static_cast<uint32_t>(*v);
  }
  return Status::Ok();
}

// Completions: `logprobs` null or an integer N >= 0 (the tokens' own log-probabilities and N alternatives). Chat:
// `logprobs` a boolean and `top_logprobs` N, which needs logprobs true.
Status ParseLogprobs(const JsonValue& root, const CompletionLimits& limits, CompletionRequest& r) {
  auto count = [&](const JsonValue& v, std::string_view name) -> Result<uint32_t> {
    if (!v.is_integer()) return WrongType(name, "an integer");
    auto n = v.AsInt64();
    if (!n.ok() || *n < 0 || *n > limits.max_top_logprobs) {
      return Status::InvalidArgument("'" + std::string(name) + "' must be between 0 and " +
                                     std::to_string(limits.max_top_logprobs));
    }
    return static_cast<uint32_t>(*n);
  };
  const JsonValue* lp = Field(root, "logprobs");
  const JsonValue* top = Field(root, "top_logprobs");
  if (!r.chat) {
    if (top != nullptr && !top->is_null()) return Status::InvalidArgument("'top_logprobs' is a chat field: completions take 'logprobs': N");
    if (lp == nullptr || lp->is_null()) return Status::Ok();
    ES_ASSIGN_OR_RETURN(r.top_logprobs, count(*lp, "logprobs"));
    r.logprobs = true;
    return Status::Ok();
  }
  if (lp != nullptr && !lp->is_null()) {
    if (!lp->is_bool()) return WrongType("logprobs", "a boolean");
    r.logprobs = lp->bool_value();
  }
  if (top != nullptr && !top->is_null()) {
    ES_ASSIGN_OR_RETURN(r.top_logprobs, count(*top, "top_logprobs"));
    if (!r.logprobs) return Status::InvalidArgument("'top_logprobs' needs 'logprobs': true");
  }
  return Status::Ok();
}

}  // namespace

Result<CompletionRequest> ParseCompletionRequest(std::string_view body, bool chat, const CompletionLimits& limits) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) return Status::InvalidArgument("the request body is not valid JSON: " + parsed.status().message());
  const JsonValue& root = *parsed;
  if (!root.is_object()) return Status::InvalidArgument("the request body must be a JSON object");
  CompletionRequest r;
  r.chat = chat;
  const JsonValue* model = Field(root, "model");
  if (model == nullptr) return Status::InvalidArgument("'model' is required");
  if (!model->is_string()) return WrongType("model", "a string");
  r.model = model->string_value();
  ES_RETURN_IF_ERROR(RefuseUnlessNeutral(root));
  if (chat) {
    ES_RETURN_IF_ERROR(ParseMessages(root, limits, r));
  } else {
    ES_RETURN_IF_ERROR(ParsePrompt(root, r));
  }

  r.max_tokens = chat ? limits.default_chat_max_tokens : limits.default_max_tokens;
  // max_completion_tokens is the newer name; it wins when both are given.
  for (std::string_view name : {"max_tokens", "max_completion_tokens"}) {
    const JsonValue* mt = Field(root, name);
    if (mt == nullptr) continue;
    if (!mt->is_integer()) return WrongType(name, "an integer");
    auto v = mt->AsInt64();
    if (!v.ok() || *v < 1 || *v > limits.max_tokens) {
      return Status::InvalidArgument("'" + std::string(name) + "' must be between 1 and " +
                                     std::to_string(limits.max_tokens));
    }
    r.max_tokens = static_cast<uint32_t>(*v);
  }
  r.max_tokens = std::min(r.max_tokens, limits.max_tokens);

  ES_RETURN_IF_ERROR(ParseSampling(root, r.sampler));
  if (const JsonValue* k = Field(root, "top_k")) {  // an extension (vLLM, llama.cpp); -1 and 0 mean no limit
    if (!k->is_integer()) return WrongType("top_k", "an integer");
    auto v = k->AsInt64();
    if (!v.ok() || *v < -1 || *v > static_cast<int64_t>(kMaxTopK)) return Status::InvalidArgument("'top_k' is out of range");
    r.sampler.top_k = *v <= 0 ? 0 : static_cast<uint32_t>(*v);
  }
  if (const JsonValue* seed = Field(root, "seed")) {
    if (!seed->is_integer()) return WrongType("seed", "an integer");
    // OpenAI takes any 64-bit integer; negative seeds map onto the unsigned range.
    if (auto v = seed->AsInt64(); v.ok()) {
      r.sampler.seed = static_cast<uint64_t>(*v);
    } else {
      ES_ASSIGN_OR_RETURN(r.sampler.seed, seed->AsUint64());
    }
  }
  ES_RETURN_IF_ERROR(ParseStop(root, limits, r));
  if (const JsonValue* stream = Field(root, "stream")) {
    if (!stream->is_bool()) return WrongType("stream", "a boolean");
    r.stream = stream->bool_value();
  }
  if (const JsonValue* so = Field(root, "stream_options")) {
    if (!so->is_object()) return WrongType("stream_options", "an object");
    if (const JsonValue* iu = Field(*so, "include_usage")) {
      if (!iu->is_bool()) return WrongType("stream_options.include_usage", "a boolean");
      r.include_usage = iu->bool_value();
    }
  }
  if (const JsonValue* n = Field(root, "n")) {
    if (!n->is_integer()) return WrongType("n", "an integer");
    auto v = n->AsInt64();
    if (!v.ok() || *v < 1 || *v > limits.max_choices) {
      return Status::InvalidArgument("'n' must be between 1 and " + std::to_string(limits.max_choices));
    }
    r.n = static_cast<uint32_t>(*v);
  }
  ES_RETURN_IF_ERROR(ParseLogprobs(root, limits, r));
  if (const JsonValue* user = Field(root, "user"); user != nullptr && !user->is_string()) {
    return WrongType("user", "a string");
  }
  return r;
}

namespace {

void WriteUsage(JsonWriter& w, const CompletionOutcome& o) {
  w.BeginObject().Key("prompt_tokens").Uint(o.prompt_tokens).Key("completion_tokens").Uint(o.completion_tokens)
      .Key("total_tokens").Uint(o.prompt_tokens + o.completion_tokens).EndObject();
}

void BeginEnvelope(JsonWriter& w, const CompletionRequest& r, std::string_view id, int64_t created,
                   std::string_view object) {
  w.BeginObject().Key("id").String(id).Key("object").String(object).Key("created").Int(created)
      .Key("model").String(r.model).Key("system_fingerprint").Null();
}

}  // namespace

namespace {

// `bytes` as UTF-8 text, each invalid sequence (a token may end inside a character) replaced by U+FFFD.
std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = n > 0 && i + n <= bytes.size();
    for (size_t j = 1; ok && j < n; ++j) ok = (static_cast<unsigned char>(bytes[i + j]) >> 6) == 0x2;
    if (ok) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

void WriteBytes(JsonWriter& w, std::string_view bytes) {
  w.BeginArray();
  for (char c : bytes) w.Uint(static_cast<unsigned char>(c));
  w.EndArray();
}

// The logprobs object of one choice: chat's {"content": [...]} or completions' parallel arrays.
void WriteLogprobs(JsonWriter& w, const CompletionRequest& r, std::span<const TokenLogprobs> tokens) {
  if (!r.logprobs) {
    w.Null();
    return;
  }
  if (r.chat) {
    w.BeginObject().Key("content").BeginArray();
    for (const TokenLogprobs& t : tokens) {
      w.BeginObject().Key("token").String(LossyUtf8(t.token)).Key("logprob").Double(t.logprob).Key("bytes");
      WriteBytes(w, t.token);
      w.Key("top_logprobs").BeginArray();
      for (const auto& [text, logprob] : t.top) {
        w.BeginObject().Key("token").String(LossyUtf8(text)).Key("logprob").Double(logprob).Key("bytes");
        WriteBytes(w, text);
        w.EndObject();
      }
      w.EndArray().EndObject();
    }
    w.EndArray().Key("refusal").Null().EndObject();
    return;
  }
  w.BeginObject().Key("tokens").BeginArray();
  for (const TokenLogprobs& t : tokens) w.String(LossyUtf8(t.token));
  w.EndArray().Key("token_logprobs").BeginArray();
  for (const TokenLogprobs& t : tokens) w.Double(t.logprob);
  w.EndArray().Key("top_logprobs").BeginArray();
  for (const TokenLogprobs& t : tokens) {
    w.BeginObject();
    for (const auto& [text, logprob] : t.top) w.Key(LossyUtf8(text)).Double(logprob);
    w.EndObject();
  }
  w.EndArray().Key("text_offset").BeginArray();
  size_t offset = 0;
  for (const TokenLogprobs& t : tokens) {
    w.Uint(offset);
    offset += t.token.size();
  }
  w.EndArray().EndObject();
}

}  // namespace

std::string FormatCompletion(const CompletionRequest& r, std::string_view id, int64_t created,
                             const CompletionOutcome& o) {
  JsonWriter w;
  BeginEnvelope(w, r, id, created, r.chat ? "chat.completion" : "text_completion");
  w.Key("choices").BeginArray();
  for (size_t i = 0; i < o.choices.size(); ++i) {
    const CompletionChoice& c = o.choices[i];
    w.BeginObject().Key("index").Uint(i);
    if (r.chat) {
      w.Key("message").BeginObject().Key("role").String("assistant").Key("content").String(c.text).EndObject();
    } else {
      w.Key("text").String(c.text);
    }
    w.Key("logprobs");
    WriteLogprobs(w, r, c.logprobs);
    w.Key("finish_reason").String(c.finish_reason).EndObject();
  }
  w.EndArray();
  w.Key("usage");
  WriteUsage(w, o);
  w.EndObject();
  return w.Take();
}

std::string FormatChunk(const CompletionRequest& r, std::string_view id, int64_t created, const TextDelta& delta,
                        std::optional<std::string_view> finish_reason, bool role_only) {
  JsonWriter w;
  BeginEnvelope(w, r, id, created, r.chat ? "chat.completion.chunk" : "text_completion");
  w.Key("choices").BeginArray().BeginObject().Key("index").Uint(delta.index);
  if (r.chat) {
    w.Key("delta").BeginObject();
    if (role_only) {
      w.Key("role").String("assistant").Key("content").String("");
    } else if (!finish_reason || !delta.text.empty()) {
      w.Key("content").String(delta.text);
    }
    w.EndObject();
  } else {
    w.Key("text").String(delta.text);
  }
  w.Key("logprobs");
  if (role_only || delta.logprobs.empty()) {
    w.Null();
  } else {
    WriteLogprobs(w, r, delta.logprobs);
  }
  w.Key("finish_reason");
  if (finish_reason) {
    w.String(*finish_reason);
  } else {
    w.Null();
  }
  w.EndObject().EndArray().EndObject();
  return w.Take();
}

std::string FormatUsageChunk(const CompletionRequest& r, std::string_view id, int64_t created,
                             const CompletionOutcome& o) {
  JsonWriter w;
  BeginEnvelope(w, r, id, created, r.chat ? "chat.completion.chunk" : "text_completion");
  w.Key("choices").BeginArray().EndArray().Key("usage");
  WriteUsage(w, o);
  w.EndObject();
  return w.Take();
}

std::string SseEvent(std::string_view json) {
  std::string out;
  out.reserve(json.size() + 8);
  out.append("data: ").append(json).append("\n\n");
  return out;
}

}  // namespace es::api
