// Same driver, but linked against ggml's unmodified ggml-quants.c (cross-check of the extraction).
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-quants.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void)t; (void)ne; abort(); }
const char * ggml_type_name(enum ggml_type t) { (void)t; return "?"; }
size_t ggml_type_size(enum ggml_type t) { (void)t; abort(); }
int main(int argc, char ** argv) {
    size_t cap = 1 << 16, n = 0, got;
    float * x = malloc(cap * sizeof(float));
    while ((got = fread(x + n, sizeof(float), cap - n, stdin)) > 0) { n += got; if (n == cap) { cap *= 2; x = realloc(x, cap * sizeof(float)); } }
    const int64_t k = (int64_t) n; void * y; size_t bytes;
    if (!strcmp(argv[1], "q8_0")) { bytes = (k / QK8_0) * sizeof(block_q8_0); y = malloc(bytes); quantize_row_q8_0_ref(x, y, k); }
    else if (!strcmp(argv[1], "q5_0")) { bytes = (k / QK5_0) * sizeof(block_q5_0); y = malloc(bytes); quantize_row_q5_0_ref(x, y, k); }
    else if (!strcmp(argv[1], "q4_K")) { bytes = (k / QK_K) * sizeof(block_q4_K); y = malloc(bytes); quantize_row_q4_K_ref(x, y, k); }
    else if (!strcmp(argv[1], "q6_K")) { bytes = (k / QK_K) * sizeof(block_q6_K); y = malloc(bytes); quantize_row_q6_K_ref(x, y, k); }
    else return 2;
    fwrite(y, 1, bytes, stdout); return 0;
}
