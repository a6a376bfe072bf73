//! Fetching from misbehaving peers, in one process over real libp2p connections on loopback: a
//! peer that stalls, one that sends more bytes than a chunk has, and one that advertises a model
//! it does not have are each dropped at their first bad reply (the two that lied banned, the
//! one that stalled not), and the file comes whole from the honest one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agora_models::ModelStore;
use agora_models::chunks::{CHUNK, ChunkList};
use agora_net::{Multiaddr, NetConfig, NetHandle, NetworkId, PeerId};
use agora_share::proto::{MAX_REQUEST, Reply, Request, What, provider_key};
use agora_share::{FetchConfig, Sharing, Want};
use futures::StreamExt;

/// A GGUF header naming a llama model, then `body`.
fn gguf(body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    let key = b"general.architecture";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"llama");
    b.extend_from_slice(body);
    b
}

async fn join(boot: Option<&Multiaddr>) -> NetHandle {
    let mut cfg = NetConfig::new(rand_seed(), NetworkId::from_genesis(b"agora-share test"));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    cfg.bootstrap = boot.into_iter().cloned().collect();
    cfg.mdns = false;
    agora_net::start(cfg).await.unwrap().handle
}

fn rand_seed() -> [u8; 32] {
    use sha2::Digest;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sha2::Sha256::digest(format!("seed {n} {:?}", std::time::SystemTime::now())).into()
}

#[derive(Clone, Copy)]
enum Bad {
    /// Reads requests and never answers.
    Stall,
    /// Answers the list honestly and every chunk with more bytes than it has.
    TooMany,
    /// Offers the model and refuses every request for it.
    Liar,
}

/// A peer that offers the model and misbehaves as `bad` says.
fn misbehave(net: NetHandle, list: ChunkList, bad: Bad, digest: String) {
    net.provide(provider_key(&digest));
    let mut incoming = net.accept(net.protocols().model.clone()).unwrap();
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let mut s = net.framed(stream);
            let list = list.clone();
            tokio::spawn(async move {
                while let Ok(Some(frame)) = s.recv_bytes(MAX_REQUEST).await {
                    let req = Request::parse(&frame).unwrap();
                    let reply = match (bad, req.what) {
                        (Bad::Stall, _) => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        (Bad::Liar, _) => Reply::Refused("not stored here".into()),
                        (Bad::TooMany, What::List) => Reply::Data(list.encode()),
                        (Bad::TooMany, What::Chunk(_)) => Reply::Data(vec![7; CHUNK as usize + 5]),
                    };
                    if s.send_bytes(&reply.encode()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_dropped_at_their_first_bad_reply_and_the_file_comes_whole() {
    // The model: 12 chunks and a bit.
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..12 * CHUNK as usize + 777)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let src = dir.path().join("m.gguf");
    std::fs::write(&src, gguf(&body)).unwrap();
    let list = ChunkList::of_file(&src).unwrap();
    let seed_home = tempfile::tempdir().unwrap();
    let seed_store = ModelStore::open(seed_home.path(), false).unwrap();
    let stored = seed_store.add(&src, Some("m")).unwrap();

    let honest = join(None).await;
    let boot = honest.listen_addrs()[0].clone();
    let sharing = Sharing::new(seed_store, None);
    sharing.announce(&honest);
    tokio::spawn(sharing.serve(honest.clone()));
    let mut bad: Vec<(Bad, PeerId)> = Vec::new();
    for b in [Bad::Stall, Bad::TooMany, Bad::Liar] {
        let n = join(Some(&boot)).await;
        bad.push((b, n.peer_id()));
        misbehave(n, list.clone(), b, stored.sha256.clone());
    }
    let fetcher = join(Some(&boot)).await;
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::open(home.path(), false).unwrap();
    let want = Want {
        sha256: stored.sha256.clone(),
        root: Some(list.root()),
        root_trusted: true,
        name: "m".into(),
        license: None,
    };
    // Wait until every misbehaving peer is found, so that each is asked.
    let t0 = std::time::Instant::now();
    loop {
        let found = fetcher
            .find_providers(provider_key(&stored.sha256), Duration::from_millis(500))
            .await;
        if bad.iter().all(|(_, p)| found.contains(p)) && found.contains(&honest.peer_id()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "providers: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cfg = FetchConfig {
        find_for: Duration::from_secs(20),
        chunk_timeout: Duration::from_secs(2),
        max_peers: 4,
        depth: 1,
    };
    let report = agora_share::fetch(&fetcher, &store, &want, &cfg)
        .await
        .unwrap();
    let got = std::fs::read(store.blob_path(&stored.sha256)).unwrap();
    assert_eq!(got, gguf(&body));
    assert_eq!(report.model.sha256, stored.sha256);
    let reason = |p: &PeerId| {
        report
            .dropped
            .iter()
            .find(|(d, _)| d == p)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{p} was not dropped: {:?}", report.dropped))
    };
    for (b, p) in &bad {
        let r = reason(p);
        match b {
            Bad::Stall => {
                assert!(r.contains("stalled") || r.contains("no chunk list"), "{r}");
                assert!(!fetcher.is_banned(p), "a slow peer is not banned");
            }
            Bad::TooMany => {
                assert!(r.contains("is 1048581 bytes, not"), "{r}");
                assert!(fetcher.is_banned(p));
            }
            Bad::Liar => {
                assert!(r.contains("refused"), "{r}");
                assert!(fetcher.is_banned(p));
            }
        }
    }
    assert!(
        report
            .chunks_by_peer
            .get(&honest.peer_id())
            .copied()
            .unwrap_or(0)
            > 0
    );
    // Nothing partial is left.
    assert!(!store.partial_path(&stored.sha256).exists());
}

/// A model added to a node's store while the node runs (by another process, as `agora model add`
/// does) is offered to peers without a restart, within one rescan of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_added_while_the_node_runs_is_offered_to_peers() {
    use sha2::Digest;
    let home = tempfile::tempdir().unwrap();
    let node = join(None).await;
    let boot = node.listen_addrs()[0].clone();
    let sharing = Sharing::new(ModelStore::open(home.path(), false).unwrap(), None);
    tokio::spawn(std::sync::Arc::clone(&sharing).keep_announcing(node.clone()));
    tokio::spawn(sharing.serve(node.clone()));
    let asker = join(Some(&boot)).await;

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("late.gguf");
    let bytes = gguf(b"added while the node runs");
    std::fs::write(&src, &bytes).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    let key = provider_key(&digest);
    // Not offered before it is stored (the asker has joined: the lookup reaches the node).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let found = asker
        .find_providers(key.clone(), Duration::from_millis(300))
        .await;
    assert!(found.is_empty(), "{found:?}");

    let stored = ModelStore::open(home.path(), false)
        .unwrap()
        .add(&src, Some("late"))
        .unwrap();
    assert_eq!(stored.sha256, digest);
    let t0 = std::time::Instant::now();
    loop {
        let found = asker
            .find_providers(key.clone(), Duration::from_millis(300))
            .await;
        if found.contains(&node.peer_id()) {
            break;
        }
        assert!(
            t0.elapsed() < agora_share::serve::RESCAN + Duration::from_secs(10),
            "not offered {:?} after the model was added",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
