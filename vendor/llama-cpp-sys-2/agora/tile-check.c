// Agora patch check (see ../AGORA-PATCH.md): ggml_vec_dot_q4_1_q8_1_tile must give the same bits
// as ggml_vec_dot_q4_1_q8_1 for every product. Built against the patched quants.c twice by
// tile-check.sh: once for AVX2 only (the 4 x 4 tile) and once for this CPU (4 x 8 with AVX-512).
// Usage: tile-check COLS   (the tile's column count). Exit status 1 if any bit differs.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <immintrin.h>
typedef uint16_t ggml_half;
typedef struct { ggml_half d, m; uint8_t qs[16]; } block_q4_1;
typedef struct { ggml_half d, s; int8_t qs[32]; } block_q8_1;
void ggml_vec_dot_q4_1_q8_1(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q4_1_q8_1_tile(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by);
// referenced by other functions of quants.c, never by the two under test
float ggml_table_f32_f16[1 << 16];

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: tile-check COLS\n"); return 2; }
    const int TC = atoi(argv[1]);
    if (TC != 4 && TC != 8) { fprintf(stderr, "COLS must be 4 or 8\n"); return 2; }
    const int K = 1536, R = 64, C = 64, nb = K / 32;
    block_q4_1 *W = malloc(sizeof(block_q4_1) * nb * R); block_q8_1 *A = malloc(sizeof(block_q8_1) * nb * C);
    srand(3);
    for (int i = 0; i < nb * R; i++) { W[i].d = _cvtss_sh((rand() % 1000) / 1e5f, 0); W[i].m = _cvtss_sh(-(rand() % 1000) / 1e5f, 0); for (int j = 0; j < 16; j++) W[i].qs[j] = rand(); }
    for (int i = 0; i < nb * C; i++) { A[i].d = _cvtss_sh((rand() % 1000) / 1e4f, 0); A[i].s = _cvtss_sh((rand() % 2000 - 1000) / 1e2f, 0); for (int j = 0; j < 32; j++) A[i].qs[j] = rand(); }
    float *o1 = malloc(4 * R * C), *o2 = malloc(4 * R * C);
    for (int c = 0; c < C; c++) for (int i = 0; i < R; i++) ggml_vec_dot_q4_1_q8_1(K, &o1[c * R + i], 0, W + i * nb, 0, A + c * nb, 0, 1);
    for (int c = 0; c < C; c += TC) for (int i = 0; i < R; i += 4) ggml_vec_dot_q4_1_q8_1_tile(K, &o2[c * R + i], R, W + i * nb, nb * sizeof(block_q4_1), A + c * nb, nb * sizeof(block_q8_1));
    int diff = 0; for (int i = 0; i < R * C; i++) if (memcmp(&o1[i], &o2[i], 4)) diff++;
    printf("tile cols %d: differing %d of %d\n", TC, diff, R * C);
    return diff != 0;
}
