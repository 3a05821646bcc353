// Decodes rows of one GGML block format with ggml's own decoder (the type's to_float from
// ggml_get_type_traits in llama.cpp's libggml-base), so that the fixtures carry ggml's values and not only
// gguf-py's. Built and run by make_fixtures.sh against the oracle's headers and library.
// Usage: ggml_to_float TYPE ROW_ELEMENTS IN.blocks OUT.f32   (TYPE as gguf-py names it: Q4_K, IQ4_XS, BF16, ...)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "ggml.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s TYPE ROW_ELEMENTS IN.blocks OUT.f32\n", argv[0]);
    return 2;
  }
  const char* name = argv[1];
  const int64_t row_elements = strtoll(argv[2], NULL, 10);
  const struct ggml_type_traits* traits = NULL;
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const struct ggml_type_traits* candidate = ggml_get_type_traits((enum ggml_type)t);
    if (candidate != NULL && candidate->type_name != NULL && strcasecmp(candidate->type_name, name) == 0) {
      traits = candidate;
      break;
    }
  }
  if (traits == NULL || traits->to_float == NULL || row_elements <= 0 || row_elements % traits->blck_size != 0) {
    fprintf(stderr, "ggml_to_float: no decoder for %s rows of %s\n", name, argv[2]);
    return 1;
  }
  const size_t row_bytes = (size_t)(row_elements / traits->blck_size) * traits->type_size;
  FILE* in = fopen(argv[3], "rb");
  FILE* out = fopen(argv[4], "wb");
  if (in == NULL || out == NULL) {
    perror("ggml_to_float");
    return 1;
  }
  unsigned char* row = malloc(row_bytes);
  float* values = malloc((size_t)row_elements * sizeof(float));
  size_t rows = 0;
  for (;;) {
    const size_t got = fread(row, 1, row_bytes, in);
    if (got == 0) break;
    if (got != row_bytes) {
      fprintf(stderr, "ggml_to_float: %s ends inside a row (%zu of %zu bytes)\n", argv[3], got, row_bytes);
      return 1;
    }
    traits->to_float(row, values, row_elements);
    if (fwrite(values, sizeof(float), (size_t)row_elements, out) != (size_t)row_elements) {
      perror("ggml_to_float");
      return 1;
    }
    ++rows;
  }
  free(row);
  free(values);
  fclose(in);
  if (fclose(out) != 0 || rows == 0) {
    fprintf(stderr, "ggml_to_float: nothing decoded from %s\n", argv[3]);
    return 1;
  }
  return 0;
}
