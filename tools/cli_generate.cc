// Generation commands: generate, logits, eval, trace, tokenize, detokenize, demo.
#include <chrono>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "compute/batch_engine.h"
#include "compute/generator.h"
#include "compute/model.h"
#include "compute/stop_filter.h"
#include "compute/tokenizer/tokenizer.h"
#include "ingest/ingest.h"
#include "tools/cli.h"
#include "tools/cli_runtime.h"

namespace es::cli {

namespace {

Result<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    long long v = 0;
    bool ok = !item.empty();
    if (ok) {
      try {
        v = std::stoll(item, &pos);
      } catch (...) {
        ok = false;
      }
    }
    if (!ok || pos != item.size() || v < 0 || v > INT32_MAX) {
      return Status::InvalidArgument("--ids expects comma-separated token ids, got '" + item + "'");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) return Status::InvalidArgument("--ids is empty");
  return ids;
}

// Where this run's usage went: "catalog" (this process is the writer), "journal" or "off".
std::string_view RecordingTarget(Runtime& rt) {
  if (rt.recorder() == nullptr) return "off";
  return rt.store().journaling() ? "journal" : "catalog";
}

// "exact" and, when the configuration changes the output, "not_exact": why.
void WriteExactnessJson(JsonWriter& w, const Runtime& rt) {
  w.Key("exact").Bool(rt.runtime().exact());
  if (rt.runtime().exact()) return;
  w.Key("not_exact").BeginArray();
  for (const auto& reason : rt.runtime().inexact_reasons()) w.String(reason);
  w.EndArray();
}

// The cache's counters and the prefetch scores at one moment; WriteCacheJson reports what happened after it.
struct CacheSnapshot {
  ProviderCounters counters;
  PrefetchAccuracy accuracy;
  uint64_t steps_with_prefetch = 0, steps_without = 0;  // governed decode steps
};
CacheSnapshot TakeSnapshot(const Runtime& rt) {
  return {rt.experts().counters(), rt.prefetch_accuracy(), rt.prefetch_governor().mode(true).steps,
          rt.prefetch_governor().mode(false).steps};
}

ProviderCounters CountersSince(const Runtime& rt, const CacheSnapshot& since) {
  ProviderCounters c = rt.experts().counters();
  c.hits -= since.counters.hits;
  c.misses -= since.counters.misses;
  c.prefetch_hits -= since.counters.prefetch_hits;
  c.wasted_prefetches -= since.counters.wasted_prefetches;
  c.prefetch_late -= since.counters.prefetch_late;
  c.bytes_read -= since.counters.bytes_read;
  c.prefetch_bytes_read -= since.counters.prefetch_bytes_read;
  c.prefetch_throttled -= since.counters.prefetch_throttled;
  c.tier_uses -= since.counters.tier_uses;
  c.tier_promotions -= since.counters.tier_promotions;
  return c;
}

void WriteCacheJson(JsonWriter& w, const Runtime& rt, const CacheSnapshot& since = {}) {
  const ProviderCounters c = CountersSince(rt, since);
  PrefetchAccuracy a = rt.prefetch_accuracy();
  a.predicted -= since.accuracy.predicted;
  a.correct -= since.accuracy.correct;
  a.used -= since.accuracy.used;
  w.BeginObject().Key("hits").Uint(c.hits).Key("misses").Uint(c.misses).Key("prefetch_hits").Uint(c.prefetch_hits)
      .Key("wasted_prefetches").Uint(c.wasted_prefetches).Key("prefetch_late").Uint(c.prefetch_late)
      .Key("bytes_read").Uint(c.bytes_read)
      .Key("prefetch_bytes_read").Uint(c.prefetch_bytes_read).Key("prefetch_throttled").Uint(c.prefetch_throttled)
      .Key("expert_uses").Uint(c.hits + c.misses).Key("miss_tier_uses").Uint(c.tier_uses)
      .Key("miss_tier_promotions").Uint(c.tier_promotions)
      .Key("prefetch_precision").Double(a.precision()).Key("prefetch_recall").Double(a.recall())
      .Key("decode_steps_prefetching").Uint(rt.prefetch_governor().mode(true).steps - since.steps_with_prefetch)
      .Key("decode_steps_not_prefetching").Uint(rt.prefetch_governor().mode(false).steps - since.steps_without)
      .EndObject();
}

// The prompt: --prompt TEXT, --prompt - (standard input) or --prompt-file FILE. Empty is refused, as the HTTP
// completions refuse it.
Result<std::string> PromptFromArgs(const Args& args) {
  if (args.Has("prompt") && args.Has("prompt-file")) return Status::InvalidArgument("give --prompt or --prompt-file, not both");
  std::string prompt;
  if (auto file = args.Get("prompt-file")) {
    ES_ASSIGN_OR_RETURN(prompt, ReadFile(*DefaultFileSystem(), *file));
  } else {
    ES_ASSIGN_OR_RETURN(prompt, args.Require("prompt"));
    if (prompt == "-") {
      std::ostringstream in;
      in << std::cin.rdbuf();
      prompt = in.str();
    }
  }
  if (prompt.empty()) return Status::InvalidArgument("the prompt is empty");
  return prompt;
}

// generate --batch-file F: every line of F (empty lines skipped) a prompt, generated together by continuous
// batching (compute/batch_engine.h), up to --parallel at once; each result in the file's order.
Status RunGenerateBatch(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  if (args.Has("prompt") || args.Has("prompt-file")) {
    return Status::InvalidArgument("give --batch-file or a prompt, not both");
  }
  ES_ASSIGN_OR_RETURN(std::string file, args.Require("batch-file"));
  ES_ASSIGN_OR_RETURN(std::string content, ReadFile(*DefaultFileSystem(), file));
  std::vector<std::string> prompts;
  std::istringstream lines(content);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) prompts.push_back(std::move(line));
  }
  if (prompts.empty()) return Status::InvalidArgument("the batch file " + file + " holds no prompt");
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, RuntimeOptions{.need_tokenizer = true, .record = true}));
  ES_ASSIGN_OR_RETURN(DecodeSettings d, DecodeSettingsFromArgs(args, *rt));
  const bool chat = args.Has("chat");
  ES_ASSIGN_OR_RETURN(int64_t kv_mb, args.GetInt("kv-budget-mb", static_cast<int64_t>(kDefaultKvBudget >> 20), 1, INT32_MAX));
  BatchEngineOptions eo;
  eo.kv_budget_bytes = static_cast<size_t>(kv_mb) << 20;
  eo.context = d.options.context;
  eo.forward = d.options.forward;
  ES_ASSIGN_OR_RETURN(int64_t parallel, args.GetInt("parallel", 0, 0, 1 << 16));
  eo.max_sequences = parallel > 0 ? static_cast<size_t>(parallel) : AutoParallel(rt->model().config(), eo.context,
                                                                                 eo.kv_budget_bytes);
  ES_ASSIGN_OR_RETURN(int64_t step, args.GetInt("batch-size", 512, 1, 1 << 20));
  eo.step_tokens = std::max(static_cast<size_t>(step), eo.max_sequences);
  ES_ASSIGN_OR_RETURN(auto engine, BatchEngine::Create(rt->model(), rt->experts(), eo));

  struct Item {
    std::vector<int32_t> prompt;
    std::unique_ptr<TextStream> stream;
    std::string text;
    std::optional<Result<SequenceResult>> result;
  };
  std::vector<Item> items(prompts.size());
  const Tokenizer& tokenizer = rt->tokenizer();
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::string text = prompts[i];
    if (chat) {
      ES_ASSIGN_OR_RETURN(text, ApplyChatTemplate(tokenizer, prompts[i]));
    }
    ES_ASSIGN_OR_RETURN(items[i].prompt, EncodeText(tokenizer, text, /*parse_special_tokens=*/chat));
    items[i].stream = std::make_unique<TextStream>(tokenizer, d.stop);
  }
  const CacheSnapshot start = TakeSnapshot(*rt);
  const auto t0 = std::chrono::steady_clock::now();
  size_t next = 0;
  auto spec_of = [&](size_t i) {
    Item& item = items[i];
    SequenceSpec spec;
    spec.prompt = item.prompt;
    spec.max_tokens = d.options.max_tokens;
    spec.sampler = d.options.sampler;
    spec.sampler.seed = d.options.sampler.seed + i;  // each prompt its own reproducible stream
    spec.stop = StopTokens(rt->model(), tokenizer, chat);
    spec.sample_vocab = tokenizer.vocab_size();
    spec.on_token = [&item](const SampledToken& t) -> Status {
      ES_ASSIGN_OR_RETURN(std::string shown, item.stream->Push(t.id));
      item.text += shown;
      return Status::Ok();
    };
    spec.should_stop = [&item] { return item.stream->stopped(); };
    spec.on_finish = [&item](Result<SequenceResult> r) {
      if (r.ok()) item.text += item.stream->Finish();
      item.result = std::move(r);
    };
    return spec;
  };
  while (next < items.size() || engine->active() > 0) {
    while (next < items.size() && (engine->CanAdmit(items[next].prompt.size(), d.options.max_tokens) ||
                                   engine->active() == 0)) {
      ES_RETURN_IF_ERROR(engine->Add(spec_of(next)).WithContext("prompt " + std::to_string(next + 1)));
      ++next;
    }
    ES_RETURN_IF_ERROR(engine->Step());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ES_RETURN_IF_ERROR(rt->FinishRecording());
  uint64_t generated = 0;
  std::vector<double> ttft;
  for (size_t i = 0; i < items.size(); ++i) {
    ES_RETURN_IF_ERROR(items[i].result->status().WithContext("prompt " + std::to_string(i + 1)));
    generated += (*items[i].result)->ids.size();
    ttft.push_back((*items[i].result)->first_token_seconds);
  }
  std::sort(ttft.begin(), ttft.end());
  const ProviderCounters c = CountersSince(*rt, start);
  const double tok_s = seconds > 0 ? static_cast<double>(generated) / seconds : 0;
  const double median_ttft = ttft[ttft.size() / 2];
  const BatchEngineCounters& k = engine->counters();
  const double mean_batch = k.steps ? static_cast<double>(k.sequences_per_step_sum) / static_cast<double>(k.steps) : 0;
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("results").BeginArray();
    for (size_t i = 0; i < items.size(); ++i) {
      const SequenceResult& r = **items[i].result;
      const std::string finish = items[i].stream->stopped() ? "stop" : r.finish_reason;
      w.BeginObject().Key("index").Uint(i).Key("text").String(items[i].text).Key("prompt_tokens").Uint(r.prompt_tokens)
          .Key("completion_tokens").Uint(r.ids.size()).Key("finish_reason").String(finish)
          .Key("time_to_first_token_seconds").Double(r.first_token_seconds).EndObject();
    }
    w.EndArray()
        .Key("prompts").Uint(items.size())
        .Key("parallel").Uint(eo.max_sequences)
        .Key("generated_tokens").Uint(generated)
        .Key("seconds").Double(seconds)
        .Key("tokens_per_second").Double(tok_s)
        .Key("median_time_to_first_token_seconds").Double(median_ttft)
        .Key("steps").Uint(k.steps)
        .Key("mean_sequences_per_step").Double(mean_batch)
        .Key("bytes_read_per_token").Double(generated ? static_cast<double>(c.bytes_read) / static_cast<double>(generated) : 0)
        .Key("seed").Uint(d.options.sampler.seed)
        .Key("configuration").String(rt->describe());
    WriteExactnessJson(w, *rt);
    w.Key("usage").String(RecordingTarget(*rt)).Key("cache");
    WriteCacheJson(w, *rt, start);
    w.EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  for (size_t i = 0; i < items.size(); ++i) {
    std::printf("--- %zu: %s\n%s\n", i + 1, prompts[i].c_str(), items[i].text.c_str());
  }
  if (!args.global().quiet) {
    std::fprintf(stderr, "[%zu prompts, up to %zu at once (%.1f per step): %llu tokens in %.2f s, %.2f tok/s; median time to "
                 "first token %.2f s; cache %llu hits, %llu misses, %s read%s]\n",
                 items.size(), eo.max_sequences, mean_batch, static_cast<unsigned long long>(generated), seconds, tok_s,
                 median_ttft, static_cast<unsigned long long>(c.hits), static_cast<unsigned long long>(c.misses),
                 HumanBytes(c.bytes_read).c_str(), rt->runtime().exact() ? "" : "; NOT EXACT: see the first line");
  }
  return Status::Ok();
}

Status RunGenerate(const Args& args) {
  if (args.Has("batch-file")) return RunGenerateBatch(args);
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string prompt, PromptFromArgs(args));
  const auto open_start = std::chrono::steady_clock::now();
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, RuntimeOptions{.need_tokenizer = true, .record = true}));
  // Opening the model: dense weights, tokenizer, the cache's arena.
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - open_start).count();
  ES_ASSIGN_OR_RETURN(DecodeSettings d, DecodeSettingsFromArgs(args, *rt));
  GenerateOptions& o = d.options;
  o.chat = args.Has("chat");
  StopFilter filter(d.stop);
  o.should_stop = [&] { return filter.stopped(); };
  const bool json = args.global().json;
  // --warmup: the prompt's prefill and one token, untimed and unrecorded, so that the timed run finds the caches
  // as a long-running process would (llama-bench's warm-up run).
  if (args.Has("warmup")) {
    GenerateOptions warm = o;
    warm.max_tokens = 1;
    warm.forward.observer = nullptr;
    warm.forward.prefetch_accuracy = nullptr;
    ES_RETURN_IF_ERROR(Generate(rt->model(), rt->tokenizer(), rt->experts(), prompt, warm, [](std::string_view) {})
                           .status().WithContext("warm-up"));
  }
  const CacheSnapshot start = TakeSnapshot(*rt);
  std::string shown;
  auto show = [&](std::string_view piece) {
    shown += piece;
    if (json) return;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  ES_ASSIGN_OR_RETURN(GenerateResult r, Generate(rt->model(), rt->tokenizer(), rt->experts(), prompt, o,
                                                 [&](std::string_view piece) { show(filter.Push(piece)); }));
  show(filter.Flush());
  // A stop string ends generation as an end-of-sequence token does.
  const std::string finish = filter.stopped() ? "stop" : r.finish_reason;
  ES_RETURN_IF_ERROR(rt->FinishRecording());
  ProviderCounters c = CountersSince(*rt, start);
  if (json) {
    JsonWriter w;
    w.BeginObject().Key("text").String(shown).Key("tokens").BeginArray();
    for (int32_t id : r.ids) w.Int(id);
    w.EndArray()
        .Key("prompt_tokens").Uint(r.prompt_ids.size())
        .Key("finish_reason").String(finish)
        .Key("seed").Uint(o.sampler.seed)
        .Key("temperature").Double(o.sampler.temperature)
        .Key("tokens_per_second").Double(r.decode_tokens_per_second())
        .Key("prefill_tokens_per_second").Double(r.prefill_tokens_per_second())
        .Key("load_seconds").Double(load_seconds)
        // The prompt's prefill and first token, after the load unless a warm-up ran in between.
        .Key("time_to_first_token_seconds").Double(r.prefill_seconds + (args.Has("warmup") ? 0.0 : load_seconds))
        .Key("state").String(rt->state_name())
        .Key("routing").String(rt->routing_name())
        .Key("configuration").String(rt->describe());
    WriteExactnessJson(w, *rt);
    w.Key("usage").String(RecordingTarget(*rt)).Key("warmup").Bool(args.Has("warmup")).Key("cache");
    WriteCacheJson(w, *rt, start);
    w.EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("\n");
  if (!args.global().quiet) {
    std::fprintf(stderr, "[%zu prompt tokens at %.1f tok/s, %zu generated at %.2f tok/s; cache %llu hits, %llu misses, %s read; %s%s]\n",
                 r.prompt_ids.size(), r.prefill_tokens_per_second(), r.ids.size(), r.decode_tokens_per_second(),
                 static_cast<unsigned long long>(c.hits), static_cast<unsigned long long>(c.misses),
                 HumanBytes(c.bytes_read).c_str(), finish.c_str(),
                 rt->runtime().exact() ? "" : "; NOT EXACT: see the first line");
  }
  return Status::Ok();
}

Status RunLogits(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string ids_text, args.Require("ids"));
  ES_ASSIGN_OR_RETURN(auto ids, ParseIds(ids_text));
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, /*need_tokenizer=*/false));
  ES_ASSIGN_OR_RETURN(auto logits, LastLogits(rt->model(), rt->experts(), ids, rt->forward_options()));
  if (args.Has("top")) {
    // The N most likely tokens, most likely first (ties: the lower id), with their logits.
    ES_ASSIGN_OR_RETURN(int64_t top, args.GetInt("top", 0, 1, static_cast<int64_t>(logits.size())));
    std::vector<int32_t> order(logits.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    order.resize(static_cast<size_t>(top));
    if (!args.global().json) {
      for (int32_t id : order) std::printf("%d\t%.6f\n", id, logits[id]);
      return Status::Ok();
    }
    JsonWriter w;
    w.BeginObject().Key("top").BeginArray();
    for (int32_t id : order) w.BeginObject().Key("id").Int(id).Key("logit").Double(logits[id]).EndObject();
    w.EndArray().EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  JsonWriter w;
  if (args.global().json) w.BeginObject().Key("logits");
  w.BeginArray();
  for (float v : logits) w.Double(v);
  w.EndArray();
  if (args.global().json) w.EndObject();
  PrintJson(w);
  return Status::Ok();
}

Status RunEval(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string path, args.Require("text"));
  ES_ASSIGN_OR_RETURN(std::string text, ReadFile(*DefaultFileSystem(), path));
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, RuntimeOptions{.need_tokenizer = true, .record = true}));
  ES_ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeText(rt->tokenizer(), text));
  ES_ASSIGN_OR_RETURN(int64_t window, args.GetInt("window", std::min<int64_t>(rt->model().config().max_positions, 1024), 2,
                                                  rt->model().config().max_positions));
  ES_ASSIGN_OR_RETURN(int64_t step, args.GetInt("step", 0, 0, window));
  std::function<void(size_t, bool)> on_position;
  if (UsageRecorder* recorder = rt->recorder()) {
    // The predicting token sat at KV position (index - 1) % window (EvaluateNll's windows).
    on_position = [recorder, window](size_t index, bool correct) {
      recorder->RecordOutcome((index - 1) % static_cast<size_t>(window), correct);
    };
  }
  // --reference M: the same windows through another model (the source of a quantized copy, or the model itself
  // against a run that is not exact), run exactly, for the KL of the next-token distributions against it.
  std::unique_ptr<Runtime> ref_rt;
  std::optional<EvalReference> reference;
  if (auto ref = args.Get("reference")) {
    ES_ASSIGN_OR_RETURN(ref_rt, Runtime::Open(args, *ref, RuntimeOptions{.need_tokenizer = false, .announce = false,
                                                                         .exact_reference = true}));
    reference = EvalReference{&ref_rt->model(), &ref_rt->experts(), ref_rt->forward_options()};
  }
  auto evaluated = EvaluateNll(rt->model(), rt->experts(), ids, static_cast<size_t>(window), rt->forward_options(),
                               on_position, static_cast<size_t>(step), reference ? &*reference : nullptr);
  if (!evaluated.ok()) return evaluated.status().WithContext(path);
  const EvalResult& r = *evaluated;
  ES_RETURN_IF_ERROR(rt->FinishRecording());
  ProviderCounters c = rt->experts().counters();
  double hit_rate = c.hits + c.misses ? static_cast<double>(c.hits) / static_cast<double>(c.hits + c.misses) : 0;
  double tps = r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0;
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("tokens").Uint(r.tokens).Key("nll").Double(r.nll).Key("mean_nll").Double(r.mean_nll())
        .Key("perplexity").Double(r.perplexity()).Key("top1_accuracy")
        .Double(r.tokens ? static_cast<double>(r.top1_correct) / static_cast<double>(r.tokens) : 0)
        .Key("window").Uint(static_cast<uint64_t>(window)).Key("step").Uint(static_cast<uint64_t>(step))
        .Key("state").String(rt->state_name()).Key("routing").String(rt->routing_name())
        .Key("configuration").String(rt->describe());
    WriteExactnessJson(w, *rt);
    w.Key("precision_mix").BeginObject();
    for (const auto& [format, projections] : rt->precision_mix()) w.Key(format).Uint(projections);
    w.EndObject();
    if (reference) {
      w.Key("reference").BeginObject().Key("model").String(*args.Get("reference")).Key("mean_kl").Double(r.mean_kl())
          .Key("top1_agreement").Double(r.tokens ? static_cast<double>(r.top1_agree) / static_cast<double>(r.tokens) : 0)
          .EndObject();
    }
    w.Key("usage").String(RecordingTarget(*rt))
        .Key("tokens_per_second").Double(tps).Key("hit_rate").Double(hit_rate).Key("cache");
    WriteCacheJson(w, *rt);
    w.EndObject();
    PrintJson(w);
    return Status::Ok();
  }
  std::printf("%llu tokens, mean NLL %.4f nats, perplexity %.3f, top-1 %.1f%%, %.1f tok/s, cache hit rate %.1f%%\n",
              static_cast<unsigned long long>(r.tokens), r.mean_nll(), r.perplexity(),
              r.tokens ? 100.0 * static_cast<double>(r.top1_correct) / static_cast<double>(r.tokens) : 0, tps,
              100 * hit_rate);
  std::string mix;
  for (const auto& [format, projections] : rt->precision_mix()) {
    mix += (mix.empty() ? "" : ", ") + format + " " + std::to_string(projections);
  }
  std::printf("precision: expert projections %s\n", mix.c_str());
  if (c.tier_uses > 0) {
    std::printf("miss tier: %llu of %llu expert uses ran from the low-bit copy, %llu experts promoted to full "
                "precision\n",
                static_cast<unsigned long long>(c.tier_uses), static_cast<unsigned long long>(c.hits + c.misses),
                static_cast<unsigned long long>(c.tier_promotions));
  }
  if (reference) {
    std::printf("against %s: mean KL %.6g nats, top-1 agreement %.2f%%\n", args.Get("reference")->c_str(), r.mean_kl(),
                r.tokens ? 100.0 * static_cast<double>(r.top1_agree) / static_cast<double>(r.tokens) : 0);
  }
  return Status::Ok();
}

Status RunTrace(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(std::string path, args.Require("text"));
  ES_ASSIGN_OR_RETURN(std::string out_path, args.Require("out"));
  ES_ASSIGN_OR_RETURN(std::string text, ReadFile(*DefaultFileSystem(), path));
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, model_name, /*need_tokenizer=*/true));
  ES_ASSIGN_OR_RETURN(std::vector<int32_t> ids, EncodeText(rt->tokenizer(), text));
  ES_ASSIGN_OR_RETURN(auto out, AtomicFileWriter::Create(DefaultFileSystem(), out_path));
  uint64_t lines = 0;
  // An unfinished trace is not published: `out` removes its temporary.
  ES_RETURN_IF_ERROR(TraceRouting(rt->model(), rt->experts(), ids, rt->forward_options(), [&](const TraceStep& step) {
    ++lines;
    return out->Append(FormatTraceLine(step) + "\n");
  }));
  ES_RETURN_IF_ERROR(out->Commit());
  const PrefetchAccuracy& a = rt->prefetch_accuracy();
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("tokens").Uint(ids.size()).Key("lines").Uint(lines).Key("cache");
    WriteCacheJson(w, *rt);
    w.EndObject();
    PrintJson(w);
  } else {
    std::printf("%zu tokens, %llu lines written to %s; prefetch precision %.3f, recall %.3f\n", ids.size(),
                static_cast<unsigned long long>(lines), out_path.c_str(), a.precision(), a.recall());
  }
  return Status::Ok();
}

// tokenize/detokenize: --model M (the model's stored tokenizer) or --tokenizer FILE.
Result<Tokenizer> TokenizerFromArgs(const Args& args) {
  if (args.Has("tokenizer")) return Tokenizer::FromFile(*args.Get("tokenizer"));
  ES_ASSIGN_OR_RETURN(std::string model_name, args.Require("model"));
  ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/false));
  return LoadModelTokenizer(*store, model_name);
}

Status RunTokenize(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string text, args.Require("text"));
  ES_ASSIGN_OR_RETURN(Tokenizer tok, TokenizerFromArgs(args));
  ES_ASSIGN_OR_RETURN(auto ids, tok.Encode(text, EncodeOptions{.add_special_tokens = !args.Has("no-special")}));
  JsonWriter w;
  if (args.global().json) w.BeginObject().Key("ids");
  w.BeginArray();
  for (auto id : ids) w.Uint(id);
  w.EndArray();
  if (args.global().json) w.EndObject();
  PrintJson(w);
  return Status::Ok();
}

Status RunDetokenize(const Args& args) {
  ES_ASSIGN_OR_RETURN(std::string ids_text, args.Require("ids"));
  ES_ASSIGN_OR_RETURN(auto ids, ParseIds(ids_text));
  ES_ASSIGN_OR_RETURN(Tokenizer tok, TokenizerFromArgs(args));
  std::vector<TokenId> t(ids.begin(), ids.end());
  ES_ASSIGN_OR_RETURN(std::string text, tok.Decode(t));
  if (args.global().json) {
    JsonWriter w;
    w.BeginObject().Key("text").String(text).EndObject();
    PrintJson(w);
  } else {
    std::printf("%s\n", text.c_str());
  }
  return Status::Ok();
}

// The demo: ingest models/tiny-qwen3-moe into the store if needed, generate greedily from a sample prompt with the
// cache every command gets (sized from memory unless flags say otherwise), print cache statistics.
Status RunDemo(const Args& args) {
  std::string dir = args.GetOr("checkpoint", "models/tiny-qwen3-moe");
  if (!std::filesystem::exists(dir)) {
    return Status::NotFound("demo checkpoint " + dir + " is missing (run from the repository root, or pass --checkpoint)");
  }
  {
    ES_ASSIGN_OR_RETURN(auto store, OpenStore(args, /*writer=*/true, /*create=*/true));
    IngestOptions o;
    o.name = "tiny-qwen3-moe";
    ES_ASSIGN_OR_RETURN(IngestResult r, IngestCheckpoint(*store, dir, o));
    std::printf("== ingest: %s (%s, %u layers, %llu experts, %s)%s\n", r.model.c_str(), r.arch.c_str(), r.layers,
                static_cast<unsigned long long>(r.experts), HumanBytes(r.bytes).c_str(),
                r.unchanged ? ", already in the store" : "");
  }
  ES_ASSIGN_OR_RETURN(auto rt, Runtime::Open(args, "tiny-qwen3-moe", RuntimeOptions{.announce = false}));
  std::string prompt = args.GetOr("prompt", "import os");
  std::printf("== generate (%s): %s", rt->describe().c_str(), prompt.c_str());
  std::fflush(stdout);
  GenerateOptions o;
  o.max_tokens = 48;
  o.forward = rt->forward_options();
  ES_ASSIGN_OR_RETURN(GenerateResult r, Generate(rt->model(), rt->tokenizer(), rt->experts(), prompt, o,
                                                 [](std::string_view piece) {
                                                   std::fwrite(piece.data(), 1, piece.size(), stdout);
                                                   std::fflush(stdout);
                                                 }));
  ProviderCounters c = rt->experts().counters();
  std::printf("\n== %zu tokens, prefill %.1f tok/s, decode %.1f tok/s\n", r.ids.size(), r.prefill_tokens_per_second(),
              r.decode_tokens_per_second());
  std::printf("== cache: %llu hits, %llu misses (hit rate %.1f%%), %llu prefetch hits, %llu wasted prefetches, %s read\n",
              static_cast<unsigned long long>(c.hits), static_cast<unsigned long long>(c.misses),
              c.hits + c.misses ? 100.0 * static_cast<double>(c.hits) / static_cast<double>(c.hits + c.misses) : 0.0,
              static_cast<unsigned long long>(c.prefetch_hits), static_cast<unsigned long long>(c.wasted_prefetches),
              HumanBytes(c.bytes_read).c_str());
  return Status::Ok();
}

std::vector<FlagSpec> Concat(std::vector<FlagSpec> a, const std::vector<FlagSpec>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

void RegisterGenerateCommands(std::vector<Command>& commands) {
  std::vector<FlagSpec> runtime = RuntimeFlags();
  auto with = [&](std::vector<FlagSpec> own) {
    own.insert(own.end(), runtime.begin(), runtime.end());
    return own;
  };
  commands.push_back({"generate",
                      "generate --model M (--prompt T | --prompt - | --prompt-file F | --batch-file F [--parallel N]) [--max-tokens --ctx-size --temperature "
                      "--top-k --top-p --min-p --repeat-penalty --seed --stop S --chat --state --cache-mb --device]",
                      "generate text, streaming it to stdout",
                      with(Concat({{"model", true, "model name"},
                                   {"prompt", true, "the prompt (- reads it from standard input)"},
                                   {"prompt-file", true, "read the prompt from this file"},
                                   {"batch-file", true, "generate for every line of this file (one prompt a line) "
                                                        "together, by continuous batching"},
                                   {"parallel", true, "with --batch-file: prompts decoding together at most (default: "
                                                      "as many 1024-token KV caches as --kv-budget-mb holds, at most 16)"},
                                   {"kv-budget-mb", true, "with --batch-file: KV caches of the prompts decoding "
                                                          "together at most (default 1024)"},
                                   {"batch-size", true, "with --batch-file: forward rows per step (default 512)"},
                                   {"chat", false, "the prompt is one user message in the model's chat template"},
                                   {"warmup", false,
                                    "first run the prompt and one token untimed and unrecorded (benchmarks: the timed "
                                    "run and its cache figures then start warm)"}},
                                  DecodeFlags())),
                      RunGenerate});
  commands.push_back({"logits", "logits --model M --ids 1,2,3 [--top N]", "final-position logits (float32)",
                      with({{"model", true, "model name"}, {"ids", true, "comma-separated token ids"},
                            {"top", true, "only the N most likely tokens (id and logit), most likely first"}}),
                      RunLogits});
  commands.push_back({"eval",
                      "eval --model M --text FILE [--state S] [--routing R] [--window N] [--step N] [--reference M2]",
                      "teacher-forced NLL and perplexity of a text file",
                      with({{"model", true, "model name"}, {"text", true, "text file"},
                            {"window", true, "tokens per window (default min(context, 1024))"},
                            {"reference", true, "another model run over the same windows: the mean KL of the "
                                                "next-token distributions against it, and top-1 agreement"},
                            {"step", true, "tokens per forward call (1: token by token, as decode runs; default: a "
                                           "whole window at once)"}}),
                      RunEval});
  commands.push_back({"trace", "trace --model M --text FILE --out T.jsonl",
                      "routing trace: one JSON line per token and layer",
                      with({{"model", true, "model name"}, {"text", true, "text file"}, {"out", true, "output .jsonl"}}),
                      RunTrace});
  commands.push_back({"tokenize", "tokenize (--model M | --tokenizer FILE) --text T", "text to token ids",
                      {{"model", true, "model name"}, {"tokenizer", true, "a tokenizer.json"}, {"text", true, "text"},
                       {"no-special", false, "do not add the post-processor's special tokens"}},
                      RunTokenize});
  commands.push_back({"detokenize", "detokenize (--model M | --tokenizer FILE) --ids 1,2", "token ids to text",
                      {{"model", true, "model name"}, {"tokenizer", true, "a tokenizer.json"}, {"ids", true, "ids"}},
                      RunDetokenize});
  commands.push_back({"demo", "demo [--checkpoint DIR] [--prompt T]",
                      "ingest the demo model if needed, generate from a sample prompt, print cache statistics",
                      with({{"checkpoint", true, "demo checkpoint (default models/tiny-qwen3-moe)"},
                            {"prompt", true, "prompt"}}),
                      RunDemo});
}

}  // namespace es::cli
