//! The attention kernel for a bf16 KV cache (vendor/llama-cpp-sys-2/AGORA-PATCH.md, "The fifth
//! change"), through ggml's graph API: close to attention computed exactly (f64), and a query
//! row's output the same bits alone (a worker decoding) or among other rows (a verifier's
//! prefill), with any thread count and with masks that give rows different keys.
#![allow(clippy::unwrap_used)]

use llama_cpp_sys_2 as sys;

/// splitmix64: reproducible inputs without a dependency
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // roughly normal: the sum of four uniforms, centred
        let u = |s: u64| (s & 0xFFFF) as f32 / 65536.0;
        (u(z) + u(z >> 16) + u(z >> 32) + u(z >> 48) - 2.0) * 1.7
    }
}

/// Keys, values (bf16 bits) and one query row per position, for `heads` query heads sharing
/// `kv_heads` key/value heads.
struct Case {
    d: usize,
    heads: usize,
    kv_heads: usize,
    n_kv: usize,
    q: Vec<f32>,   // [heads][n_kv][d]: a query row for every position
    k: Vec<u16>,   // [kv_heads][n_kv][d]
    v: Vec<u16>,   // [kv_heads][n_kv][d]
    window: usize, // a row sees the keys of the last `window` positions up to its own
}

fn bf16(x: f32) -> u16 {
    // SAFETY: a pure conversion
    unsafe { sys::ggml_fp32_to_bf16(x).bits }
}
fn f32_of(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

impl Case {
    fn new(d: usize, heads: usize, kv_heads: usize, n_kv: usize, window: usize, seed: u64) -> Case {
        let mut r = Rng(seed);
        let q = (0..heads * n_kv * d).map(|_| r.next() * 1.5).collect();
        let k = (0..kv_heads * n_kv * d).map(|_| bf16(r.next())).collect();
        let v = (0..kv_heads * n_kv * d).map(|_| bf16(r.next())).collect();
        Case {
            d,
            heads,
            kv_heads,
            n_kv,
            q,
            k,
            v,
            window,
        }
    }

    fn sees(&self, row: usize, key: usize) -> bool {
        key <= row && row - key < self.window
    }

    /// ggml's attention for the query rows of positions `rows`, with `threads` threads:
    /// [row][head][d]
    fn ggml(&self, rows: &[usize], threads: i32) -> Vec<f32> {
        self.run(rows, threads, false, 1).0
    }

    /// [`Case::ggml`], computed `times` times (the fastest time is returned), with ggml's
    /// reference kernels (upstream's key-by-key one) when `use_ref`
    fn run(&self, rows: &[usize], threads: i32, use_ref: bool, times: usize) -> (Vec<f32>, f64) {
        let (d, h, hkv, nkv, n) = (self.d, self.heads, self.kv_heads, self.n_kv, rows.len());
        let i = |x: usize| x as i64;
        // SAFETY: ggml's C API on tensors of this context, written within the sizes they were
        // created with; the context is freed at the end and nothing outlives it.
        unsafe {
            let ctx = sys::ggml_init(sys::ggml_init_params {
                mem_size: 64 << 20,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: false,
            });
            assert!(!ctx.is_null());
            let q = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F32, i(d), i(n), i(h), 1);
            let k = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_BF16, i(d), i(nkv), i(hkv), 1);
            let v = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_BF16, i(d), i(nkv), i(hkv), 1);
            let m = sys::ggml_new_tensor_4d(ctx, sys::GGML_TYPE_F16, i(nkv), i(n), 1, 1);
            let qd = std::slice::from_raw_parts_mut((*q).data as *mut f32, d * n * h);
            for head in 0..h {
                for (j, &row) in rows.iter().enumerate() {
                    let from = (head * nkv + row) * d;
                    qd[(head * n + j) * d..][..d].copy_from_slice(&self.q[from..from + d]);
                }
            }
            std::slice::from_raw_parts_mut((*k).data as *mut u16, self.k.len())
                .copy_from_slice(&self.k);
            std::slice::from_raw_parts_mut((*v).data as *mut u16, self.v.len())
                .copy_from_slice(&self.v);
            let md = std::slice::from_raw_parts_mut((*m).data as *mut u16, nkv * n);
            let zero = sys::ggml_fp32_to_fp16(0.0);
            let minf = sys::ggml_fp32_to_fp16(f32::NEG_INFINITY);
            for (j, &row) in rows.iter().enumerate() {
                for key in 0..nkv {
                    md[j * nkv + key] = if self.sees(row, key) { zero } else { minf };
                }
            }
            let scale = 1.0 / (d as f32).sqrt();
            let out = sys::ggml_flash_attn_ext(ctx, q, k, v, m, scale, 0.0, 0.0);
            let gf = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(gf, out);
            let mut plan = sys::ggml_graph_plan(gf, threads, std::ptr::null_mut());
            let mut work = vec![0u8; plan.work_size];
            plan.work_data = work.as_mut_ptr();
            plan.use_ref = use_ref;
            let mut best = f64::INFINITY;
            for _ in 0..times {
                let t = std::time::Instant::now();
                assert_eq!(
                    sys::ggml_graph_compute(gf, &mut plan),
                    sys::GGML_STATUS_SUCCESS
                );
                best = best.min(t.elapsed().as_secs_f64());
            }
            // out is [d, heads, rows]
            let got = std::slice::from_raw_parts((*out).data as *const f32, d * h * n).to_vec();
            sys::ggml_free(ctx);
            (got, best)
        }
    }

    /// attention in f64 from the same inputs: [row][head][d]
    fn exact(&self, rows: &[usize]) -> Vec<f64> {
        let (d, h, nkv) = (self.d, self.heads, self.n_kv);
        let value =
            |kvh: usize, key: usize, e: usize| f64::from(f32_of(self.v[(kvh * nkv + key) * d + e]));
        let mut out = Vec::with_capacity(rows.len() * h * d);
        for &row in rows {
            for head in 0..h {
                let kvh = head / (h / self.kv_heads);
                let q = &self.q[(head * nkv + row) * d..][..d];
                let keys: Vec<usize> = (0..nkv).filter(|&key| self.sees(row, key)).collect();
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&key| {
                        let k = &self.k[(kvh * nkv + key) * d..][..d];
                        let dot: f64 = q
                            .iter()
                            .zip(k)
                            .map(|(&a, &b)| f64::from(a) * f64::from(f32_of(b)))
                            .sum();
                        dot / (d as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let total: f64 = w.iter().sum();
                for e in 0..d {
                    let o: f64 = keys
                        .iter()
                        .zip(&w)
                        .map(|(&key, wt)| wt * value(kvh, key, e))
                        .sum();
                    out.push(o / total);
                }
            }
        }
        out
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn bf16_attention_is_close_to_exact_attention() {
    // SmolLM2's heads (64 wide, 3 query heads per key/value head) and Gemma 3's (256 wide)
    for (d, heads, kv_heads, n) in [(64, 3, 1, 300), (256, 4, 1, 120)] {
        let case = Case::new(d, heads, kv_heads, n, usize::MAX, 7);
        let rows: Vec<usize> = (0..n).collect();
        let want = case.exact(&rows);
        let err = |got: &[f32]| {
            got.iter()
                .zip(&want)
                .map(|(&a, b)| (f64::from(a) - b).abs())
                .fold(0.0, f64::max)
        };
        let ours = err(&case.ggml(&rows, 2));
        let upstream = err(&case.run(&rows, 2, true, 1).0);
        println!("d = {d}: largest error {ours:.1e} (upstream's kernel: {upstream:.1e})");
        // measured 1.7e-6 (d = 64, 300 rows); upstream's kernel, which rounds the query to
        // bf16, 8e-3
        assert!(ours < 2e-5, "d = {d}: largest error {ours:e}");
        assert!(
            upstream > 100.0 * ours,
            "upstream's error {upstream:e}, ours {ours:e}"
        );
    }
}

#[test]
fn a_row_is_the_same_bits_alone_batched_and_with_any_thread_count() {
    // a full causal mask, and a sliding window (rows of one group see different keys)
    for window in [usize::MAX, 45] {
        let case = Case::new(64, 3, 1, 160, window, 11);
        let all: Vec<usize> = (0..150).collect();
        let batched = case.ggml(&all, 2);
        assert_eq!(bits(&batched), bits(&case.ggml(&all, 1)), "1 vs 2 threads");
        assert_eq!(bits(&batched), bits(&case.ggml(&all, 3)), "3 vs 2 threads");
        let width = 3 * 64;
        let of = |x: &[f32], j: usize| bits(&x[j * width..][..width]);
        // rows alone (the decoding worker)
        for row in [0, 1, 7, 8, 31, 32, 33, 44, 45, 63, 64, 100, 149] {
            let alone = case.ggml(&[row], 1);
            assert_eq!(
                bits(&alone),
                of(&batched, row),
                "row {row}, window {window}"
            );
        }
        // rows out of order among others
        let mixed = [149, 3, 64, 65, 66, 0];
        let got = case.ggml(&mixed, 2);
        for (j, &row) in mixed.iter().enumerate() {
            assert_eq!(
                of(&got, j),
                of(&batched, row),
                "row {row} mixed, window {window}"
            );
        }
    }
}

/// The kernel's speed against upstream's key-by-key one, on SmolLM2's attention shape (9 query
/// heads, 3 key/value heads, 64 wide), one layer, a fresh prompt of 330 and of 1,800 tokens.
/// A benchmark, not a test: `cargo test --release -p agora-llama --test attention --
/// --ignored --nocapture`
#[test]
#[ignore]
fn attention_speed_against_upstream() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    for n in [330, 1800] {
        let case = Case::new(64, 9, 3, n, usize::MAX, 3);
        let rows: Vec<usize> = (0..n).collect();
        let (_, ours) = case.run(&rows, threads, false, 5);
        let (_, upstream) = case.run(&rows, threads, true, 5);
        println!(
            "{n} tokens, {threads} threads: {:.1} ms per layer, upstream's kernel {:.1} ms ({:.2}x)",
            ours * 1e3,
            upstream * 1e3,
            ours / upstream
        );
    }
}
