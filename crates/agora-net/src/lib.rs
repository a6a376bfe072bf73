//! Agora's libp2p layer. Only this crate knows libp2p (DESIGN.md invariant).
//!
//! - Transports: TCP and QUIC; Noise; Yamux. Identify, ping, Kademlia (bootstrap peers), mDNS,
//!   gossipsub (node status), AutoNAT, relay client and DCUtR.
//! - A network id (hash of a community's genesis policy) is part of every protocol and topic
//!   name; peers that identify with another network are disconnected and blocked.
//! - Application protocols run over plain libp2p streams with length-prefixed frames
//!   ([`wire::Framed`]): `/agora/<net>/status/1` (a peer's status, on connect) and
//!   `/agora/<net>/generate/1` (generation, defined by the node).
//! - Bounded: connections (total and per peer), the peer table, command channels, frame sizes.
//!   Peers that break the protocol are banned ([`NetHandle::ban`]).

pub mod limits;
#[doc(hidden)]
pub use libp2p::multiaddr;
pub mod status;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, autonat, dcutr, gossipsub, identify, mdns, noise,
    ping, relay, tcp, yamux,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use libp2p::multiaddr::Protocol as multiaddr_protocol;
pub use libp2p::{Multiaddr, PeerId};
pub use libp2p_stream::IncomingStreams;
pub use status::{NodeStatus, PeerInfo, ServedModel};

/// A community's network: the sha256 of its genesis policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetworkId(pub [u8; 32]);

impl NetworkId {
    /// The id of a genesis policy's bytes.
    pub fn from_genesis(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The first 8 bytes in hex: what protocol names carry.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl std::fmt::Display for NetworkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// How to run the network layer.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's Ed25519 secret key (the same key as `$AGORA_HOME/key`).
    pub ed25519_secret: [u8; 32],
    pub network: NetworkId,
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to listen through (for nodes behind NAT), each ending in `/p2p/<relay id>`.
    pub relays: Vec<Multiaddr>,
    pub mdns: bool,
    pub status_interval: Duration,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_frame: usize,
    pub max_peers: usize,
}

impl NetConfig {
    pub fn new(ed25519_secret: [u8; 32], network: NetworkId) -> Self {
        Self {
            ed25519_secret,
            network,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            relays: Vec::new(),
            mdns: true,
            status_interval: Duration::from_secs(2),
            max_connections: 256,
            max_connections_per_peer: 4,
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_peers: 1024,
        }
    }
}

/// An error from libp2p while setting up the network layer (its transports, behaviours,
/// protocol names or topics).
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// Errors starting the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid node key: {0}")]
    Key(#[source] libp2p::identity::DecodingError),
    #[error("could not set up libp2p: {0}")]
    Setup(#[source] SetupError),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    #[error("could not open a stream to {peer}: {source}")]
    Open {
        peer: PeerId,
        #[source]
        source: libp2p_stream::OpenStreamError,
    },
    #[error("the network task has stopped")]
    Stopped,
}

impl NetError {
    fn setup(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        NetError::Setup(Box::new(e))
    }
}

/// Protocol names of one network.
#[derive(Clone, Debug)]
pub struct Protocols {
    pub status: StreamProtocol,
    pub generate: StreamProtocol,
    /// A gateway's kept transcripts, asked for by validators.
    pub transcript: StreamProtocol,
    pub identify: String,
    pub topic: String,
    /// Signed verdicts of validators.
    pub verdict_topic: String,
    /// Model files, chunk by chunk, from the nodes that store them.
    pub model: StreamProtocol,
}

impl Protocols {
    pub fn new(net: &NetworkId) -> Result<Self, NetError> {
        let n = net.short();
        let proto = |s: String| StreamProtocol::try_from_owned(s).map_err(NetError::setup);
        Ok(Self {
            status: proto(format!("/agora/{n}/status/1"))?,
            generate: proto(format!("/agora/{n}/generate/1"))?,
            transcript: proto(format!("/agora/{n}/transcript/1"))?,
            identify: format!("/agora/{n}/1.0.0"),
            topic: format!("agora/{n}/status/1"),
            verdict_topic: format!("agora/{n}/verdicts/1"),
            model: proto(format!("/agora/{n}/model/1"))?,
        })
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    autonat: autonat::Behaviour,
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Ban(PeerId, String),
    Dial(Multiaddr),
    PublishVerdict(Vec<u8>),
    Provide(Vec<u8>),
    FindProviders(Vec<u8>, mpsc::Sender<PeerId>),
}

/// Provider lookups running at once; more are answered "none found" at once.
const MAX_PROVIDER_QUERIES: usize = 32;
/// Providers one lookup returns at most.
const MAX_PROVIDERS: usize = 64;
/// Keys this node announces it provides at most.
const MAX_PROVIDED: usize = 1024;
/// How often provider records are announced again (records expire after 48 h by default, and
/// a record announced before any peer was known reached no one).
const REPROVIDE_EVERY: Duration = Duration::from_secs(300);

struct Shared {
    peers: RwLock<status::PeerTable>,
    own_status: RwLock<Option<NodeStatus>>,
    listen_addrs: RwLock<Vec<Multiaddr>>,
    banned: RwLock<HashSet<PeerId>>,
    /// Verdicts received by gossip, until someone takes the receiver.
    verdicts: std::sync::Mutex<Option<Verdicts>>,
}

/// Gossiped verdicts: (forwarding peer, envelope bytes).
pub type Verdicts = mpsc::Receiver<(PeerId, Vec<u8>)>;

/// Handle on the running network layer; cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    peer_id: PeerId,
    protocols: Protocols,
    max_frame: usize,
    status_max_age: Duration,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

/// A framed libp2p stream.
pub type FramedStream = wire::Framed<libp2p::Stream>;

impl NetHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub fn protocols(&self) -> &Protocols {
        &self.protocols
    }

    /// Addresses we listen on, each with our `/p2p/` id appended.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let addrs = self
            .shared
            .listen_addrs
            .read()
            .map(|a| a.clone())
            .unwrap_or_default();
        addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(self.peer_id)))
            .collect()
    }

    /// Sets the status this node gossips and answers with.
    pub fn set_status(&self, status: NodeStatus) {
        if let Ok(mut s) = self.shared.own_status.write() {
            *s = Some(status);
        }
    }

    /// Everything known about peers of this network.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared
            .peers
            .read()
            .map(|t| t.all())
            .unwrap_or_default()
    }

    /// Connected peers with a fresh status.
    pub fn live_peers(&self) -> Vec<PeerInfo> {
        self.peers()
            .into_iter()
            .filter(|p| p.is_live(self.status_max_age))
            .collect()
    }

    /// Refuses all traffic with `peer` from now on and closes its connections.
    pub fn ban(&self, peer: PeerId, reason: &str) {
        if let Ok(mut b) = self.shared.banned.write()
            && !b.insert(peer)
        {
            return;
        }
        warn!(%peer, reason, "banning peer");
        let _ = self
            .commands
            .try_send(Command::Ban(peer, reason.to_string()));
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.shared
            .banned
            .read()
            .map(|b| b.contains(peer))
            .unwrap_or(false)
    }

    /// Gossips a signed verdict (a DSSE envelope's JSON) to the network.
    pub fn publish_verdict(&self, envelope: Vec<u8>) {
        let _ = self.commands.try_send(Command::PublishVerdict(envelope));
    }

    /// The verdicts peers gossip, as (forwarding peer, envelope bytes); `None` after the first
    /// call. Bounded: when nobody reads, new verdicts are dropped.
    pub fn take_verdicts(&self) -> Option<Verdicts> {
        self.shared.verdicts.lock().ok()?.take()
    }

    /// Whether the network task has stopped (commands go nowhere).
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Announces on the DHT that this node provides `key` (e.g. a model's digest), now, each
    /// time its routing table gains a peer shortly after, and every few minutes. Giving a key
    /// again changes nothing (so a caller may give all its keys each time it looks); a call made
    /// while the command queue is full is dropped, and the next one counts.
    pub fn provide(&self, key: Vec<u8>) {
        let _ = self.commands.try_send(Command::Provide(key));
    }

    /// The peers that announced they provide `key` (at most 64; this node excluded): those the
    /// lookup finds within `settle` of the first one (a lookup that runs to its end may wait
    /// on unreachable peers), or all of them if it ends sooner. Empty when none are found, the
    /// lookup fails, or too many lookups are running.
    pub async fn find_providers(&self, key: Vec<u8>, settle: Duration) -> Vec<PeerId> {
        let (tx, mut rx) = mpsc::channel(MAX_PROVIDERS);
        if self
            .commands
            .send(Command::FindProviders(key, tx))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut found = Vec::new();
        let Some(first) = rx.recv().await else {
            return found;
        };
        found.push(first);
        let until = tokio::time::Instant::now() + settle;
        while let Ok(Some(p)) = tokio::time::timeout_at(until, rx.recv()).await {
            found.push(p);
        }
        found
    }

    /// Dials an address (e.g. one given by a user).
    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.commands.try_send(Command::Dial(addr));
    }

    /// Opens a framed stream for `protocol` to `peer` (dialing it if needed).
    pub async fn open(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<FramedStream, NetError> {
        let mut control = self.control.clone();
        let s = control
            .open_stream(peer, protocol)
            .await
            .map_err(|source| NetError::Open { peer, source })?;
        Ok(wire::Framed::new(s, self.max_frame))
    }

    /// Accepts inbound streams for `protocol` (once per protocol).
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, NetError> {
        let mut control = self.control.clone();
        control.accept(protocol).map_err(NetError::setup)
    }

    /// Wraps an accepted stream in frames with this network's size limit.
    pub fn framed(&self, s: libp2p::Stream) -> FramedStream {
        wire::Framed::new(s, self.max_frame)
    }
}

/// The running network layer: its handle and the task driving the swarm.
pub struct Net {
    pub handle: NetHandle,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts listening and discovering; returns once the listeners are up.
pub async fn start(cfg: NetConfig) -> Result<Net, NetError> {
    let mut secret = cfg.ed25519_secret;
    let keypair = Keypair::ed25519_from_bytes(&mut secret).map_err(NetError::Key)?;
    let peer_id = keypair.public().to_peer_id();
    let protocols = Protocols::new(&cfg.network)?;
    let topic = gossipsub::IdentTopic::new(protocols.topic.clone());

    let mut swarm = build_swarm(keypair, &cfg, &protocols)?;
    let verdict_topic = gossipsub::IdentTopic::new(protocols.verdict_topic.clone());
    join_network(&mut swarm, &cfg, [&topic, &verdict_topic])?;

    let (verdict_tx, verdict_rx) = mpsc::channel(1024);
    let shared = Arc::new(Shared {
        peers: RwLock::new(status::PeerTable::new(cfg.max_peers)),
        own_status: RwLock::new(None),
        listen_addrs: RwLock::new(Vec::new()),
        banned: RwLock::new(HashSet::new()),
        verdicts: std::sync::Mutex::new(Some(verdict_rx)),
    });
    let control = swarm.behaviour().stream.new_control();
    let (commands, command_rx) = mpsc::channel(256);
    let handle = NetHandle {
        peer_id,
        protocols: protocols.clone(),
        max_frame: cfg.max_frame,
        status_max_age: cfg.status_interval * 5,
        commands,
        control,
        shared: Arc::clone(&shared),
    };

    // Wait for the listeners so callers can print real addresses.
    let pending_events = wait_for_listeners(&mut swarm, &shared, cfg.listen.len()).await;

    // Serve our status to peers who ask.
    let status_incoming = handle.accept(protocols.status.clone())?;
    tokio::spawn(serve_status(handle.clone(), status_incoming));

    let driver = Driver {
        swarm,
        handle: handle.clone(),
        topic,
        verdict_topic,
        verdict_tx,
        status_interval: cfg.status_interval,
        provided: HashSet::new(),
        last_provided: None,
        provider_queries: HashMap::new(),
    };
    let task = tokio::spawn(driver.run(command_rx, pending_events));
    Ok(Net { handle, task })
}

/// The swarm: TCP, QUIC and relayed transports with every behaviour of the network layer.
fn build_swarm(
    keypair: Keypair,
    cfg: &NetConfig,
    protocols: &Protocols,
) -> Result<Swarm<Behaviour>, NetError> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(NetError::setup)?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(NetError::setup)?
        .with_behaviour(|key, relay| new_behaviour(key, relay, cfg, protocols))
        .map_err(NetError::setup)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

/// The behaviours: identify, Kademlia, gossipsub, mDNS (if enabled), AutoNAT, relay client,
/// DCUtR, streams, with the connection limits and block list.
fn new_behaviour(
    key: &Keypair,
    relay: relay::client::Behaviour,
    cfg: &NetConfig,
    protocols: &Protocols,
) -> Result<Behaviour, SetupError> {
    let id = key.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new(protocols.identify.clone(), key.public())
            .with_agent_version(format!("agora/{}", env!("CARGO_PKG_VERSION"))),
    );
    let mut kad_cfg = kad::Config::new(StreamProtocol::try_from_owned(format!(
        "/agora/{}/kad/1.0.0",
        cfg.network.short()
    ))?);
    kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
    let mut kad = kad::Behaviour::with_config(id, MemoryStore::new(id), kad_cfg);
    kad.set_mode(Some(kad::Mode::Server));
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .max_transmit_size(64 << 10)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_cfg,
    )?;
    let mdns = if cfg.mdns {
        Toggle::from(Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            id,
        )?))
    } else {
        Toggle::from(None)
    };
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(
            ConnectionLimits::default()
                .with_max_established(Some(cfg.max_connections))
                .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
                .with_max_pending_incoming(Some(64)),
        ),
        identify,
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(10))),
        kad,
        gossipsub,
        mdns,
        autonat: autonat::Behaviour::new(id, autonat::Config::default()),
        relay,
        dcutr: dcutr::Behaviour::new(id),
        stream: libp2p_stream::Behaviour::new(),
    })
}

/// Subscribes to the gossip topics, starts the listeners (direct and through relays) and
/// dials the bootstrap peers.
fn join_network(
    swarm: &mut Swarm<Behaviour>,
    cfg: &NetConfig,
    topics: [&gossipsub::IdentTopic; 2],
) -> Result<(), NetError> {
    for t in topics {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(NetError::setup)?;
    }
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|source| NetError::Listen {
                addr: addr.clone(),
                source,
            })?;
    }
    for relay in &cfg.relays {
        let circuit = relay.clone().with(Protocol::P2pCircuit);
        if let Err(e) = swarm.listen_on(circuit.clone()) {
            warn!(%circuit, "cannot listen through relay: {e}");
        }
    }
    for addr in &cfg.bootstrap {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, "cannot dial bootstrap peer: {e}");
        }
    }
    Ok(())
}

/// Drives the swarm until `expected` listen addresses are up (at most 5 s), recording them in
/// `shared`; returns the other events seen meanwhile, for the driver to handle.
async fn wait_for_listeners(
    swarm: &mut Swarm<Behaviour>,
    shared: &Shared,
    expected: usize,
) -> Vec<SwarmEvent<BehaviourEvent>> {
    let mut pending_events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while shared.listen_addrs.read().map(|a| a.len()).unwrap_or(0) < expected {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                if let Ok(mut a) = shared.listen_addrs.write() {
                    a.push(address);
                }
            }
            Ok(other) => pending_events.push(other),
            Err(_) => break,
        }
    }
    pending_events
}

/// Answers status requests: one frame with our current status.
async fn serve_status(handle: NetHandle, mut incoming: IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        if handle.is_banned(&peer) {
            continue;
        }
        let status = handle.shared.own_status.read().ok().and_then(|s| s.clone());
        let mut framed = handle.framed(stream);
        tokio::spawn(async move {
            if let Some(s) = status {
                let _ = tokio::time::timeout(Duration::from_secs(5), framed.send(&s)).await;
            }
            let _ = framed.close().await;
        });
    }
}

/// Asks `peer` for its status and records it.
async fn fetch_status(handle: NetHandle, peer: PeerId) {
    let proto = handle.protocols.status.clone();
    let result = async {
        let mut s = tokio::time::timeout(Duration::from_secs(5), handle.open(peer, proto))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        s.recv_timeout::<NodeStatus>(Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(Some(status)) => {
            if let Ok(mut t) = handle.shared.peers.write() {
                t.set_status(peer, status);
            }
        }
        Ok(None) => debug!(%peer, "peer has no status yet"),
        Err(e) => debug!(%peer, "status fetch failed: {e}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Driver {
    swarm: Swarm<Behaviour>,
    handle: NetHandle,
    topic: gossipsub::IdentTopic,
    verdict_topic: gossipsub::IdentTopic,
    verdict_tx: mpsc::Sender<(PeerId, Vec<u8>)>,
    status_interval: Duration,
    /// Keys this node provides (re-announced as peers come and every few minutes).
    provided: HashSet<Vec<u8>>,
    last_provided: Option<tokio::time::Instant>,
    /// Running provider lookups: where their providers go, and those found so far.
    provider_queries: HashMap<kad::QueryId, (mpsc::Sender<PeerId>, HashSet<PeerId>)>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        pending: Vec<SwarmEvent<BehaviourEvent>>,
    ) {
        for ev in pending {
            self.on_event(ev);
        }
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
        let mut status_tick = tokio::time::interval(self.status_interval);
        let mut reprovide_tick = tokio::time::interval(REPROVIDE_EVERY);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Ban(peer, reason)) => {
                        debug!(%peer, reason, "blocking");
                        self.swarm.behaviour_mut().blocked.block_peer(peer);
                        let _ = self.swarm.disconnect_peer_id(peer);
                        self.swarm.behaviour_mut().kad.remove_peer(&peer);
                        if let Ok(mut t) = self.handle.shared.peers.write() { t.remove(&peer); }
                    }
                    Some(Command::Dial(addr)) => {
                        if let Err(e) = self.swarm.dial(addr.clone()) { warn!(%addr, "dial failed: {e}"); }
                    }
                    Some(Command::PublishVerdict(bytes)) => {
                        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.verdict_topic.clone(), bytes) {
                            debug!("verdict not gossiped: {e}");
                        }
                    }
                    Some(Command::Provide(key)) => {
                        // A key already provided is announced again by reprovide, not here.
                        if self.provided.len() < MAX_PROVIDED && self.provided.insert(key.clone()) {
                            self.announce(key);
                        }
                    }
                    Some(Command::FindProviders(key, tx)) => {
                        // Dropping `tx` answers "none" when too many lookups run.
                        if self.provider_queries.len() < MAX_PROVIDER_QUERIES {
                            let id = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
                            self.provider_queries.insert(id, (tx, HashSet::new()));
                        }
                    }
                    None => return,
                },
                _ = status_tick.tick() => self.publish_status(),
                _ = reprovide_tick.tick() => self.reprovide(),
                ev = self.swarm.select_next_some() => self.on_event(ev),
            }
        }
    }

    fn announce(&mut self, key: Vec<u8>) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(kad::RecordKey::new(&key))
        {
            debug!("provider record not stored: {e}");
        }
    }

    /// Announces every provided key again.
    fn reprovide(&mut self) {
        self.last_provided = Some(tokio::time::Instant::now());
        for key in self.provided.clone() {
            self.announce(key);
        }
    }

    fn publish_status(&mut self) {
        let Some(mut status) = self
            .handle
            .shared
            .own_status
            .read()
            .ok()
            .and_then(|s| s.clone())
        else {
            return;
        };
        status.time_ms = now_ms();
        if let Ok(bytes) = serde_json::to_vec(&status) {
            // "No peers subscribed" is normal for a node alone.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.topic.clone(), bytes);
        }
    }

    fn set_peer(&self, f: impl FnOnce(&mut status::PeerTable)) {
        if let Ok(mut t) = self.handle.shared.peers.write() {
            f(&mut t);
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            // Keep a small network fully connected so every gateway can reach every worker; a
            // new peer may be one of those that should hold our provider records.
            kad::Event::RoutingUpdated { peer, .. } => {
                if peer != self.handle.peer_id
                    && !self.swarm.is_connected(&peer)
                    && !self.handle.is_banned(&peer)
                {
                    let _ = self.swarm.dial(peer);
                }
                let recent = self
                    .last_provided
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(2));
                if !self.provided.is_empty() && !recent {
                    self.reprovide();
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => {
                if let Some((tx, found)) = self.provider_queries.get_mut(&id)
                    && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                {
                    for p in providers {
                        if found.len() < MAX_PROVIDERS
                            && p != self.handle.peer_id
                            && !self.handle.is_banned(&p)
                            && found.insert(p)
                        {
                            let _ = tx.try_send(p);
                        }
                    }
                }
                if step.last {
                    self.provider_queries.remove(&id);
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                debug!(%address, "listening");
                if let Ok(mut a) = self.handle.shared.listen_addrs.write()
                    && !a.contains(&address)
                {
                    a.push(address);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                debug!(%peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                debug!(%peer_id, "disconnected");
                self.set_peer(|t| t.set_connected(peer_id, false));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != self.handle.protocols.identify {
                    // Another community's node (or something else entirely): never talk to it.
                    debug!(%peer_id, theirs = %info.protocol_version, "peer of another network");
                    self.handle.ban(peer_id, "belongs to another network");
                    return;
                }
                for addr in info.listen_addrs.iter().take(16) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                let known = self
                    .handle
                    .shared
                    .peers
                    .read()
                    .ok()
                    .and_then(|t| t.get(&peer_id).map(|p| p.connected));
                self.set_peer(|t| {
                    t.set_identity(
                        peer_id,
                        info.agent_version.clone(),
                        info.listen_addrs.clone(),
                    );
                    t.set_connected(peer_id, true);
                });
                if known != Some(true) {
                    tokio::spawn(fetch_status(self.handle.clone(), peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let Some(source) = message.source else { return };
                if source == self.handle.peer_id || self.handle.is_banned(&source) {
                    return;
                }
                if message.topic == self.verdict_topic.hash() {
                    // Checked (signature, trust) by whoever reads them; dropped when nobody does.
                    let _ = self.verdict_tx.try_send((source, message.data));
                    return;
                }
                match serde_json::from_slice::<NodeStatus>(&message.data) {
                    Ok(status) => self.set_peer(|t| t.set_status(source, status)),
                    Err(e) => debug!(%source, "ignoring a malformed status: {e}"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == self.handle.peer_id
                        || self.handle.is_banned(&peer)
                        || self.swarm.is_connected(&peer)
                    {
                        continue;
                    }
                    debug!(%peer, %addr, "found by mDNS");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.set_peer(|t| t.set_rtt(peer, rtt));
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!("incoming connection failed: {error}")
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, "outgoing connection failed: {error}")
            }
            _ => {}
        }
    }
}
