//! Prometheus metrics for `/metrics` (text exposition format).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use agora_engine::Load;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: &'static str,
}

/// Every metric the API exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RouteLabels, Counter>,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub cancelled: Counter,
    pub queue_depth: Gauge,
    pub slots_busy: Gauge,
    pub slots: Gauge,
    pub duration: Family<RouteOnly, Histogram>,
    pub ttft: Histogram,
    /// HTTP connections open now.
    pub connections_open: Gauge,
    /// HTTP connections refused beyond `max_connections`.
    pub connections_refused: Counter,
    /// The engine's prompt-prefix cache (read from its load at each scrape): lookups, hits,
    /// prompt tokens, reused tokens, tokens held now.
    prefix: [Gauge; 8],
    /// CPU threads the engine decodes with now.
    engine_threads: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agora");
        let requests = Family::<RouteLabels, Counter>::default();
        let prompt_tokens = Counter::default();
        let completion_tokens = Counter::default();
        let cancelled = Counter::default();
        let queue_depth = Gauge::default();
        let slots_busy = Gauge::default();
        let slots = Gauge::default();
        let duration = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let ttft = Histogram::new(latency_buckets());
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        let prefix: [Gauge; 8] = Default::default();
        let engine_threads = Gauge::default();
        registry.register(
            "engine_threads",
            "CPU threads the engine decodes with now (fewer while other processes keep cores busy)",
            engine_threads.clone(),
        );
        for (g, (name, help)) in prefix.iter().zip([
            ("prefix_cache_lookups", "Prompts admitted (prefix cache lookups), since start"),
            ("prefix_cache_hits", "Prompts that reused a cached prompt prefix, since start"),
            ("prefix_cache_prompt_tokens", "Prompt tokens admitted, since start"),
            (
                "prefix_cache_reused_tokens",
                "Prompt tokens whose state was reused from the cache instead of computed, since start",
            ),
            ("prefix_cache_tokens", "Prompt tokens whose state the slots hold now"),
            (
                "prefix_cache_host_tokens",
                "Tokens whose state was copied out of slots into host memory, held now",
            ),
            (
                "prefix_cache_host_bytes",
                "Bytes of host memory the copied-out states take now (budget: --prefix-cache-mb)",
            ),
            (
                "prefix_cache_restored",
                "Prompts whose prefix was copied back from host memory into a slot, since start",
            ),
        ]) {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        registry.register(
            "generations_cancelled",
            "Generations ended because the client went away",
            cancelled.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a slot",
            queue_depth.clone(),
        );
        registry.register(
            "slots_in_use",
            "Sequence slots decoding now",
            slots_busy.clone(),
        );
        registry.register("slots", "Sequence slots of the engine", slots.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to last byte",
            duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated token",
            ttft.clone(),
        );
        registry.register(
            "http_connections_open",
            "HTTP connections open now",
            connections_open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections refused beyond the connection limit",
            connections_refused.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            prompt_tokens,
            completion_tokens,
            cancelled,
            queue_depth,
            slots_busy,
            slots,
            duration,
            ttft,
            connections_open,
            connections_refused,
            prefix,
            engine_threads,
        }
    }

    pub fn count(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RouteLabels { route, status })
            .inc();
    }

    /// The exposition text, with gauges read from `load` now.
    pub fn render(&self, load: Load) -> String {
        self.queue_depth.set(i64::from(load.queued));
        self.slots_busy.set(i64::from(load.slots_busy));
        self.slots.set(i64::from(load.slots.min(i32::MAX as u32)));
        self.engine_threads.set(i64::from(load.threads));
        let p = load.prefix;
        for (g, v) in self.prefix.iter().zip([
            p.lookups,
            p.hits,
            p.prompt_tokens,
            p.reused_tokens,
            p.cached_tokens,
            p.host_tokens,
            p.host_bytes,
            p.restored,
        ]) {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}
