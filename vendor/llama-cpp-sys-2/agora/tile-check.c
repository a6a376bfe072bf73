// Agora patch check (see ../AGORA-PATCH.md): ggml_vec_dot_q4_1_q8_1_tile must give the same bits
// as ggml_vec_dot_q4_1_q8_1 for every product, and the Q4_K and Q6_K tiles (4 x 4, AVX2) the same
// bits as ggml_vec_dot_q4_K_q8_K and ggml_vec_dot_q6_K_q8_K. Built against the patched quants.c twice by
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
typedef struct { ggml_half d, dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; } block_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } block_q8_K;
typedef void (*vec_dot_t)(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
typedef void (*tile_t)(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by);
void ggml_vec_dot_q4_K_q8_K(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q4_K_q8_K_tile(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by);
void ggml_vec_dot_q6_K_q8_K(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q6_K_q8_K_tile(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by);
// f16 -> f32 as a table, as ggml-cpu fills it at start-up (the K-quant products read it)
float ggml_table_f32_f16[1 << 16];

static float rnd(float scale) { return (rand() % 2001 - 1000) / 1000.0f * scale; }

// Every product of R weight rows x C columns of K = nb * 256, single and tiled (4 x 4); the number
// of outputs whose bits differ.
static int check_k(const char *name, size_t wsize, vec_dot_t one, tile_t tile, void (*fill)(void *)) {
    const int nb = 6, K = nb * 256, R = 32, C = 32;
    char *W = malloc(wsize * nb * R);
    block_q8_K *A = malloc(sizeof(block_q8_K) * nb * C);
    for (int i = 0; i < nb * R; i++) fill(W + i * wsize);
    for (int i = 0; i < nb * C; i++) {
        A[i].d = rnd(0.01f);
        for (int j = 0; j < 256; j++) A[i].qs[j] = rand() % 255 - 127;
        for (int g = 0; g < 16; g++) { int t = 0; for (int j = 0; j < 16; j++) t += A[i].qs[16 * g + j]; A[i].bsums[g] = t; }
    }
    float *o1 = malloc(4 * R * C), *o2 = malloc(4 * R * C);
    for (int c = 0; c < C; c++) for (int i = 0; i < R; i++) one(K, &o1[c * R + i], 0, W + i * nb * wsize, 0, A + c * nb, 0, 1);
    for (int c = 0; c < C; c += 4) for (int i = 0; i < R; i += 4) tile(K, &o2[c * R + i], R, W + i * nb * wsize, nb * wsize, A + c * nb, nb * sizeof(block_q8_K));
    int diff = 0; for (int i = 0; i < R * C; i++) if (memcmp(&o1[i], &o2[i], 4)) diff++;
    int zero = 0; for (int i = 0; i < R * C; i++) zero += o1[i] == 0;
    printf("; %s 4 x 4: differing %d of %d", name, diff, R * C);
    if (zero > R * C / 100) { printf(" (%d products are 0: the check is not checking)", zero); diff++; }
    free(W); free(A); free(o1); free(o2);
    return diff;
}
static void fill_q4_K(void *p) {
    block_q4_K *b = p; b->d = _cvtss_sh(rnd(0.02f), 0); b->dmin = _cvtss_sh(rnd(0.02f), 0);
    for (int j = 0; j < 12; j++) b->scales[j] = rand(); for (int j = 0; j < 128; j++) b->qs[j] = rand();
}
static void fill_q6_K(void *p) {
    block_q6_K *b = p; b->d = _cvtss_sh(rnd(0.02f), 0);
    for (int j = 0; j < 128; j++) b->ql[j] = rand(); for (int j = 0; j < 64; j++) b->qh[j] = rand();
    for (int j = 0; j < 16; j++) b->scales[j] = rand() % 255 - 127;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: tile-check COLS\n"); return 2; }
    const int TC = atoi(argv[1]);
    for (int i = 0; i < 1 << 16; i++) ggml_table_f32_f16[i] = _cvtsh_ss(i);
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
    printf("tile cols %d: differing %d of %d", TC, diff, R * C);
    diff += check_k("Q4_K", sizeof(block_q4_K), ggml_vec_dot_q4_K_q8_K, ggml_vec_dot_q4_K_q8_K_tile, fill_q4_K);
    diff += check_k("Q6_K", sizeof(block_q6_K), ggml_vec_dot_q6_K_q8_K, ggml_vec_dot_q6_K_q8_K_tile, fill_q6_K);
    printf("\n");
    return diff != 0;
}
