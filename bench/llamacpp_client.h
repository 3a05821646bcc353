// What the plain clients of llama.cpp's C API here (llamacpp_speed.c, llamacpp_ppl.c) share: llama.cpp's log
// kept to its errors, and model loading without a progress bar.
#ifndef EXPERTSTORE_BENCH_LLAMACPP_CLIENT_H_
#define EXPERTSTORE_BENCH_LLAMACPP_CLIENT_H_

#include <stdbool.h>
#include <stdio.h>

#include "ggml-backend.h"
#include "llama.h"

static void quiet(enum ggml_log_level level, const char* text, void* data) {
  (void)data;
  if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool no_progress(float progress, void* data) {
  (void)progress;
  (void)data;
  return true;
}

#endif  // EXPERTSTORE_BENCH_LLAMACPP_CLIENT_H_
