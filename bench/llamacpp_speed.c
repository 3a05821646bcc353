// llama.cpp's own decode speed on a GGUF file: a plain client of its C API (include/llama.h), compiled by
// bench/llamacpp_speed.sh against the headers and prebuilt libraries of the llama.cpp oracle. The model is mapped
// with mmap as llama.cpp does by default; REPACK 1 keeps llama.cpp's default of copying the weights into its
// repacked CPU layouts (anonymous memory), 0 is llama-cli's --no-repack (the weights stay in the mapped file).
// Evaluates the prompt's token ids, then generates greedily (argmax of the logits).
// Usage: llamacpp_speed LIB_DIR MODEL.gguf N_NEW THREADS REPACK < ids (comma-separated)
// Prints one JSON line: prompt tokens, load, prefill and decode seconds, decode tokens/s (the tokens after the
// first, which comes out of the prompt's evaluation), the prompt's tokens/s when it is evaluated again afterwards
// (warm: the weights it needs are in memory by then), the generated ids.
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llamacpp_client.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static llama_token argmax(const float* logits, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s LIB_DIR MODEL.gguf N_NEW THREADS REPACK < ids\n", argv[0]);
    return 2;
  }
  const int n_new = atoi(argv[3]), threads = atoi(argv[4]);
  llama_token ids[4096];
  int n = 0;
  while (n < 4096 && scanf("%d", &ids[n]) == 1) {
    ++n;
    if (getchar() == EOF) break;
  }
  if (n == 0 || n_new < 2) {
    fprintf(stderr, "no prompt ids, or fewer than 2 tokens to generate\n");
    return 2;
  }
  llama_log_set(quiet, NULL);
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  const double t0 = now();
  struct llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.load_mode = LLAMA_LOAD_MODE_MMAP;
  mp.use_extra_bufts = atoi(argv[5]) != 0;
  mp.progress_callback = no_progress;
  struct llama_model* model = llama_model_load_from_file(argv[2], mp);
  if (model == NULL) {
    fprintf(stderr, "llama.cpp could not load %s\n", argv[2]);
    return 1;
  }
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = (uint32_t)(n + n_new + 8);
  cp.n_batch = 512;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  struct llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == NULL) {
    fprintf(stderr, "llama.cpp could not create a context\n");
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  const double t1 = now();
  if (llama_decode(ctx, llama_batch_get_one(ids, n)) != 0) return 1;
  llama_token out[4096];
  out[0] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
  const double t2 = now();
  int got = 1;
  for (; got < n_new && got < 4096; ++got) {
    if (llama_decode(ctx, llama_batch_get_one(&out[got - 1], 1)) != 0) return 1;
    out[got] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
  }
  const double t3 = now();
  // The prompt once more with the weights now in memory: the warm prefill.
  llama_memory_clear(llama_get_memory(ctx), true);
  const double t4 = now();
  if (llama_decode(ctx, llama_batch_get_one(ids, n)) != 0) return 1;
  (void)llama_get_logits_ith(ctx, -1);
  const double t5 = now();
  printf("{\"prompt_tokens\":%d,\"load_s\":%.4f,\"prefill_s\":%.4f,\"decode_s\":%.4f,\"tokens_per_second\":%.4f,"
         "\"warm_prefill_tokens_per_second\":%.4f,\"tokens\":[",
         n, t1 - t0, t2 - t1, t3 - t2, (double)(got - 1) / (t3 - t2), (double)n / (t5 - t4));
  for (int i = 0; i < got; ++i) printf(i ? ",%d" : "%d", out[i]);
  printf("]}\n");
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
