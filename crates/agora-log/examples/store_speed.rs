#![allow(clippy::unwrap_used)]
use agora_log::store::LogStore;
use agora_tlog::hash::{Hash, leaf_hash};
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let qr = std::env::args().nth(1).as_deref() == Some("qr");
    let batch: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1000);
    let (s, mut f) = LogStore::open(&dir.path().join("l.redb"), "o", &[0; 32], qr).unwrap();
    let total = 200_000u64;
    let t = Instant::now();
    let mut n = 0u64;
    let mut commits = 0;
    while n < total {
        let data: Vec<Vec<u8>> = (0..batch as u64)
            .map(|i| {
                let mut v = vec![0u8; 512];
                v[..8].copy_from_slice(&(n + i).to_le_bytes());
                v
            })
            .collect();
        let b: Vec<(&[u8], Hash)> = data.iter().map(|d| (d.as_slice(), leaf_hash(d))).collect();
        s.append(&mut f, &b).unwrap();
        n += batch as u64;
        commits += 1;
    }
    let e = t.elapsed().as_secs_f64();
    println!(
        "quick_repair={qr} batch={batch}: {:.0} entries/s, {:.2} ms/commit",
        total as f64 / e,
        e * 1000.0 / commits as f64
    );
}
