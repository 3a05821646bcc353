// llama.cpp's perplexity of a text on a GGUF file: a plain client of its C API (include/llama.h), compiled by
// bench/llamacpp_compare.sh against the headers and prebuilt libraries of the llama.cpp oracle. The text is
// tokenized by llama.cpp (its BOS added when the model asks for one), cut into windows of WINDOW tokens that do not
// overlap, and each window is evaluated from an empty context with logits at every position: every token but a
// window's first is predicted from the tokens before it in its window (as `expertstore eval --window` does).
// Usage: llamacpp_ppl LIB_DIR MODEL.gguf TEXT_FILE WINDOW THREADS
// Prints one JSON line: predicted tokens, total NLL (nats), perplexity, and the token ids.
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llamacpp_client.h"

// -log softmax(logits)[target], in double precision.
static double nll(const float* logits, int n, int target) {
  double max = logits[0];
  for (int i = 1; i < n; ++i) max = logits[i] > max ? logits[i] : max;
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += exp((double)logits[i] - max);
  return -((double)logits[target] - max - log(sum));
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s LIB_DIR MODEL.gguf TEXT_FILE WINDOW THREADS\n", argv[0]);
    return 2;
  }
  const int window = atoi(argv[4]), threads = atoi(argv[5]);
  FILE* f = fopen(argv[3], "rb");
  if (f == NULL || window < 2) {
    fprintf(stderr, "cannot read %s, or a window below 2 tokens\n", argv[3]);
    return 2;
  }
  fseek(f, 0, SEEK_END);
  const long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* text = malloc((size_t)size + 1);
  if (text == NULL || fread(text, 1, (size_t)size, f) != (size_t)size) return 2;
  fclose(f);
  text[size] = 0;

  llama_log_set(quiet, NULL);
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.progress_callback = no_progress;
  struct llama_model* model = llama_model_load_from_file(argv[2], mp);
  if (model == NULL) {
    fprintf(stderr, "llama.cpp could not load %s\n", argv[2]);
    return 1;
  }
  const struct llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  const int max_ids = (int)size + 16;
  llama_token* ids = malloc(sizeof(llama_token) * (size_t)max_ids);
  const int n = llama_tokenize(vocab, text, (int)size, ids, max_ids, true, false);
  if (n < 2) {
    fprintf(stderr, "the text is %d tokens long\n", n);
    return 1;
  }
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = (uint32_t)window;
  cp.n_batch = (uint32_t)window;
  cp.n_ubatch = (uint32_t)window;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  struct llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == NULL) {
    fprintf(stderr, "llama.cpp could not create a context\n");
    return 1;
  }
  struct llama_batch batch = llama_batch_init(window, 0, 1);
  double total = 0;
  long predicted = 0;
  for (int start = 0; start + 1 < n; start += window) {
    const int len = n - start < window ? n - start : window;
    if (len < 2) break;
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.n_tokens = len;
    for (int i = 0; i < len; ++i) {
      batch.token[i] = ids[start + i];
      batch.pos[i] = i;
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = 1;
    }
    if (llama_decode(ctx, batch) != 0) {
      fprintf(stderr, "llama_decode failed\n");
      return 1;
    }
    for (int i = 0; i + 1 < len; ++i) {
      total += nll(llama_get_logits_ith(ctx, i), n_vocab, ids[start + i + 1]);
      ++predicted;
    }
  }
  printf("{\"tokens\":%ld,\"nll\":%.9g,\"perplexity\":%.9g,\"ids\":[", predicted, total, exp(total / (double)predicted));
  for (int i = 0; i < n; ++i) printf(i ? ",%d" : "%d", ids[i]);
  printf("]}\n");
  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  free(ids);
  free(text);
  return 0;
}
