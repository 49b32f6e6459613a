#!/usr/bin/env python3
"""Assemble ggml_quants_ref.c from verbatim pieces of ggml's sources.
usage: extract.py <dir with ggml-quants.c ggml-common.h ggml-impl.h ggml.h> <source-label> > ggml_quants_ref.c
"""
import sys, pathlib
d = pathlib.Path(sys.argv[1]); label = sys.argv[2]
quants = (d / "ggml-quants.c").read_text()
common = (d / "ggml-common.h").read_text()
impl = (d / "ggml-impl.h").read_text()

def func(src, sig):
    """Text from the line starting with `sig` up to and including the first line that is exactly '}'."""
    i = src.index(sig)
    assert i == 0 or src[i - 1] == "\n", sig
    j = src.index("\n}\n", i)
    return src[i:j + 3]

def between(src, start, end_incl):
    i = src.index(start)
    j = src.index(end_incl, i)
    return src[i:j + len(end_incl)]

def line(src, text):
    assert ("\n" + text + "\n") in ("\n" + src), text
    return text + "\n"

def struct(src, name):
    # from the "#define QKx" / "typedef struct {" before the block up to its static_assert line
    end = src.index("} %s;\n" % name)
    start = src.rindex("typedef struct {", 0, end)
    sa_end = src.index("\n", src.index("static_assert(sizeof(%s)" % name, end))
    return src[start:sa_end + 1]

out = []
out.append(f"""// ggml reference quantizers (Q8_0, Q5_0, Q4_K, Q6_K), extracted verbatim from
// {label}
// by scripts/ggml_quantize_reference/extract.py. Everything between the
// "BEGIN VERBATIM" / "END VERBATIM" markers is copied unchanged from ggml's sources
// (ggml-common.h, ggml-impl.h, ggml-quants.c); only the driver main() at the end is new.
// Build: gcc -O0 -std=c11 -o ggml_quants_ref ggml_quants_ref.c -lm   (no -ffast-math)
// Usage: ggml_quants_ref <q8_0|q5_0|q4_K|q6_K> < row.f32 > blocks.bin
//        (stdin: little-endian f32 values, a multiple of 256 of them)

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ggml.h (C, C11): 
#define GGML_RESTRICT restrict
// ggml.h:
typedef uint16_t ggml_fp16_t;

// ---- BEGIN VERBATIM ggml-common.h (GGML_COMMON_DECL_C branch) ----
""")
out.append(line(common, "typedef uint16_t ggml_half;"))
out.append(line(common, "typedef uint32_t ggml_half2;"))
out.append(line(common, "#define GGML_COMMON_AGGR_U"))
out.append(line(common, "#define GGML_COMMON_AGGR_S"))
out.append(line(common, "#define QK_K 256"))
out.append(line(common, "#define K_SCALE_SIZE 12"))
out.append(line(common, "#define GGML_EXTENSION __extension__"))
out.append(line(common, "#define QK5_0 32"))
out.append(struct(common, "block_q5_0"))
out.append(line(common, "#define QK8_0 32"))
out.append(struct(common, "block_q8_0"))
out.append(struct(common, "block_q4_K"))
out.append(struct(common, "block_q6_K"))
out.append("// ---- END VERBATIM ggml-common.h ----\n\n// ---- BEGIN VERBATIM ggml-impl.h ----\n")
out.append(between(impl, "#ifndef MIN\n", "#endif\n"))
out.append(between(impl, "#ifndef MAX\n", "#endif\n"))
out.append(between(impl, "static inline float fp32_from_bits(", "#define GGML_FP32_TO_FP16(x) GGML_COMPUTE_FP32_TO_FP16(x)\n"))
out.append("// ---- END VERBATIM ggml-impl.h ----\n\n// ---- BEGIN VERBATIM ggml-quants.c ----\n")
out.append(line(quants, "#define GROUP_MAX_EPS 1e-15f"))
out.append("\n")
for sig in ["void quantize_row_q5_0_ref(", "void quantize_row_q8_0_ref(",
            "static inline int nearest_int(", "static float make_qx_quants(",
            "static float make_qkx2_quants(", "static inline void get_scale_min_k4(",
            "void quantize_row_q4_K_ref(", "void quantize_row_q6_K_ref("]:
    out.append(func(quants, sig))
    out.append("\n")
out.append("// ---- END VERBATIM ggml-quants.c ----\n")
out.append(r'''
// ---- driver (not from ggml) ----
int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s q8_0|q5_0|q4_K|q6_K < f32 > blocks\n", argv[0]); return 2; }
    size_t cap = 1 << 16, n = 0;
    float * x = malloc(cap * sizeof(float));
    size_t got;
    while ((got = fread(x + n, sizeof(float), cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) { cap *= 2; x = realloc(x, cap * sizeof(float)); }
    }
    if (n == 0 || n % QK_K != 0) { fprintf(stderr, "need a multiple of %d floats, got %zu\n", QK_K, n); return 1; }
    const int64_t k = (int64_t) n;
    void * y; size_t bytes;
    if (!strcmp(argv[1], "q8_0")) {
        bytes = (size_t)(k / QK8_0) * sizeof(block_q8_0); y = malloc(bytes); quantize_row_q8_0_ref(x, y, k);
    } else if (!strcmp(argv[1], "q5_0")) {
        bytes = (size_t)(k / QK5_0) * sizeof(block_q5_0); y = malloc(bytes); quantize_row_q5_0_ref(x, y, k);
    } else if (!strcmp(argv[1], "q4_K")) {
        bytes = (size_t)(k / QK_K) * sizeof(block_q4_K); y = malloc(bytes); quantize_row_q4_K_ref(x, y, k);
    } else if (!strcmp(argv[1], "q6_K")) {
        bytes = (size_t)(k / QK_K) * sizeof(block_q6_K); y = malloc(bytes); quantize_row_q6_K_ref(x, y, k);
    } else { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    fwrite(y, 1, bytes, stdout);
    free(y); free(x);
    return 0;
}
''')
sys.stdout.write("".join(out))
