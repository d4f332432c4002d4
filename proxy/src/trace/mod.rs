//! Distributed tracing, as Envoy does it for Istio: every HTTP request's trace context is read
//! (W3C `traceparent`, B3 single or multi), continued or started, and passed on to the next hop
//! with this proxy's span as the parent; a sampled request gets a span (CLIENT on the outbound
//! side, SERVER on the inbound side) with Istio's tags, exported in batches off the request
//! path (`export`).
//!
//! Cost: with tracing off (no `tracing` in the config, or no provider) nothing here runs. An unsampled request
//! pays for reading and rewriting its trace headers only (one pass over the header names, a
//! lookup per trace header that came, one insert per header written, one allocation for the
//! values); the span's data is gathered for sampled requests alone.
//!
//! Propagation: the next hop gets the formats the request came with (valid ones): W3C
//! `traceparent` (and `tracestate` when a valid one came beside it), the `x-b3-*` headers, the
//! single `b3` header; as Envoy passes on the format its tracer reads. A request that came
//! with none (or none valid) starts the trace, and the next hop gets `traceparent` and the
//! `x-b3-*` headers both: Envoy's Zipkin tracer would write B3 only and its OpenTelemetry
//! tracer W3C only, but writing both lets an app instrumented for either continue the trace.

pub mod context;
pub mod export;
mod node;
mod span;

use std::sync::Arc;

use http::{HeaderName, Request};
use rand::RngExt;
use trellis_xds::config as pb;

pub use export::SpanLabels;
pub use node::LocalNode;
pub use span::{Kind, SpanRecord, Started};

use crate::config::ConfigError;
use crate::serve::Conn;
use crate::{Proxy, Side};

/// Envoy's default limit on the `http.url` tag.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;
/// Sampling is decided in millionths, as Envoy's fractional percentages are.
const PER_MILLION: u32 = 1_000_000;

/// The compiled `tracing` of a configuration.
#[derive(Debug)]
pub struct Tracing {
    /// Sampled when a roll in 0..1,000,000 is below this.
    threshold: u32,
    exporter: Arc<export::Exporter>,
    local: Arc<LocalNode>,
    literal_tags: Vec<(Arc<str>, String)>,
    header_tags: Vec<HeaderTag>,
    max_path_tag_length: usize,
    source: pb::TracingConfig,
}

#[derive(Debug)]
struct HeaderTag {
    tag: Arc<str>,
    header: HeaderName,
    default: Option<String>,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: format!("tracing.{}", field.into()), message: message.into() }
}

impl Tracing {
    /// Compiles the config's tracing; an exporter whose provider and node did not change is
    /// kept (with its queue and connection).
    pub fn compile(
        config: Option<&pb::TracingConfig>,
        previous: Option<&Arc<Tracing>>,
    ) -> Result<Option<Arc<Tracing>>, ConfigError> {
        // Without a provider the proxy stays out of the way: making itself the parent of spans
        // it never exports would leave holes in the apps' traces.
        let Some((config, provider)) = config.and_then(|c| c.provider.as_ref().map(|p| (c, p))) else {
            return Ok(None);
        };
        if let Some(previous) = previous.filter(|p| p.source == *config) {
            return Ok(Some(previous.clone()));
        }
        let percent = config.sampling_percent;
        if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
            return Err(err("sampling_percent", format!("{percent} is not a percentage (0-100)")));
        }
        let threshold = (percent * f64::from(PER_MILLION) / 100.0).round() as u32;
        let local = Arc::new(LocalNode::resolve(config.node.as_ref()));
        let mut literal_tags = Vec::new();
        let mut header_tags = Vec::new();
        for (i, tag) in config.custom_tags.iter().enumerate() {
            let field = format!("custom_tags[{i}]");
            if tag.tag.is_empty() {
                return Err(err(format!("{field}.tag"), "required"));
            }
            let name: Arc<str> = tag.tag.as_str().into();
            let or_default =
                |v: &pb::TracingValueFrom| (!v.default_value.is_empty()).then(|| v.default_value.clone());
            match &tag.kind {
                Some(pb::tracing_custom_tag::Kind::Literal(value)) => {
                    literal_tags.push((name, value.clone()))
                }
                Some(pb::tracing_custom_tag::Kind::Environment(from)) => {
                    // Read once: the proxy's environment does not change.
                    let value = std::env::var(&from.name).ok().or_else(|| or_default(from));
                    if let Some(value) = value {
                        literal_tags.push((name, value));
                    }
                }
                Some(pb::tracing_custom_tag::Kind::Header(from)) => {
                    let header = HeaderName::from_bytes(from.name.as_bytes()).map_err(|_| {
                        err(format!("{field}.header.name"), format!("{:?} is not a header name", from.name))
                    })?;
                    header_tags.push(HeaderTag { tag: name, header, default: or_default(from) });
                }
                None => {
                    return Err(err(
                        format!("{field}.kind"),
                        "one of literal, header, environment is required",
                    ));
                }
            }
        }
        let reused = previous
            .map(|p| &p.exporter)
            .filter(|e| e.provider() == provider && *e.local() == *local)
            .cloned();
        let exporter = match reused {
            Some(e) => e,
            None => Arc::new(export::Exporter::compile(provider, local.clone())?),
        };
        Ok(Some(Arc::new(Tracing {
            threshold,
            exporter,
            local,
            literal_tags,
            header_tags,
            max_path_tag_length: match config.max_path_tag_length {
                0 => DEFAULT_MAX_PATH_TAG_LENGTH,
                n => n as usize,
            },
            source: config.clone(),
        })))
    }

    fn sample(&self) -> bool {
        match self.threshold {
            0 => false,
            t if t >= PER_MILLION => true,
            t => crate::with_fast_rng(|rng| rng.random_range(0..PER_MILLION)) < t,
        }
    }
}

/// Reads the request's trace context, decides sampling, and rewrites its trace headers for the
/// next hop. Returns the span under way when the request is sampled.
pub fn begin<B>(request: &mut Request<B>, conn: &Conn, proxy: &Arc<Proxy>) -> Option<Box<Started>> {
    let config = proxy.config.load();
    let tracing = config.tracing.as_ref()?;
    let headers = request.headers_mut();
    let present = context::Present::of(headers);
    let incoming = context::Incoming::read_present(headers, present);
    let sampled = incoming.sampled.unwrap_or_else(|| tracing.sample());
    let span_id = nonzero(|rng| rng.random::<u64>());
    let out =
        context::Outgoing::continuing(&incoming, span_id, sampled, || nonzero(|rng| rng.random::<u128>()));
    let formats = context::Formats::arrived(&incoming);
    context::write(headers, &out, formats, present, incoming.parent.is_some_and(|p| p.w3c));
    if !sampled {
        return None;
    }
    let kind = match conn.side {
        Side::Outbound => Kind::Client,
        Side::Inbound => Kind::Server,
    };
    Some(Started::new(request, conn, proxy, tracing.clone(), out, kind))
}

/// The xDS client knows who the proxy is (its node): the spans say so wherever the control
/// plane's config left it out (the translation is shared by every proxy of a scope).
pub fn fill_node(config: &mut pb::ProxyConfig, node: &trellis_xds::types::ProxyNode) {
    let Some(tracing) = config.tracing.as_mut() else { return };
    let n = tracing.node.get_or_insert_with(Default::default);
    let label = |names: &[&str]| names.iter().find_map(|k| node.labels.get(*k)).cloned();
    let fill = |field: &mut String, value: Option<String>| {
        if field.is_empty()
            && let Some(value) = value.filter(|v| !v.is_empty())
        {
            *field = value;
        }
    };
    fill(&mut n.node_id, Some(node.id.clone()));
    fill(&mut n.namespace, Some(node.namespace.clone()));
    let service = label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]);
    fill(&mut n.canonical_service, service.or_else(|| Some(node.workload.clone())));
    let revision = label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"]);
    fill(&mut n.canonical_revision, revision);
}

fn nonzero<T: PartialEq + Default>(draw: impl Fn(&mut rand::rngs::SmallRng) -> T) -> T {
    loop {
        let value = crate::with_fast_rng(&draw);
        if value != T::default() {
            return value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(percent: f64) -> pb::TracingConfig {
        let provider = pb::TracingProvider {
            name: "zipkin".into(),
            addresses: vec!["127.0.0.1:9411".into()],
            kind: Some(pb::tracing_provider::Kind::Zipkin(pb::TracingZipkin::default())),
            ..Default::default()
        };
        pb::TracingConfig { sampling_percent: percent, provider: Some(provider), ..Default::default() }
    }

    #[test]
    fn sampling_percentages_outside_0_to_100_are_refused() {
        for bad in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
            let e = Tracing::compile(Some(&config(bad)), None).unwrap_err();
            assert!(e.to_string().contains("tracing.sampling_percent"), "{e}");
        }
        let t = Tracing::compile(Some(&config(0.01)), None).unwrap().unwrap();
        assert_eq!(t.threshold, 100);
        assert!(Tracing::compile(None, None).unwrap().is_none());
        let no_provider = pb::TracingConfig { sampling_percent: 100.0, ..Default::default() };
        assert!(Tracing::compile(Some(&no_provider), None).unwrap().is_none(), "no provider: off");
    }

    #[test]
    fn custom_tags_compile_and_bad_ones_name_their_field() {
        let mut c = config(1.0);
        c.custom_tags = vec![
            pb::TracingCustomTag {
                tag: "env".into(),
                kind: Some(pb::tracing_custom_tag::Kind::Literal("prod".into())),
            },
            pb::TracingCustomTag {
                tag: "from-env".into(),
                kind: Some(pb::tracing_custom_tag::Kind::Environment(pb::TracingValueFrom {
                    name: "TRELLIS_TEST_SURELY_UNSET".into(),
                    default_value: "fallback".into(),
                })),
            },
            pb::TracingCustomTag {
                tag: "user".into(),
                kind: Some(pb::tracing_custom_tag::Kind::Header(pb::TracingValueFrom {
                    name: "x-user".into(),
                    default_value: String::new(),
                })),
            },
        ];
        let t = Tracing::compile(Some(&c), None).unwrap().unwrap();
        assert_eq!(t.literal_tags, [("env".into(), "prod".into()), ("from-env".into(), "fallback".into())]);
        assert_eq!(t.header_tags.len(), 1);
        c.custom_tags[2].kind = Some(pb::tracing_custom_tag::Kind::Header(pb::TracingValueFrom {
            name: "bad header".into(),
            default_value: String::new(),
        }));
        let e = Tracing::compile(Some(&c), None).unwrap_err();
        assert!(e.to_string().contains("tracing.custom_tags[2].header.name"), "{e}");
    }

    #[test]
    fn an_unchanged_config_keeps_its_compiled_tracing() {
        let c = config(5.0);
        let first = Tracing::compile(Some(&c), None).unwrap().unwrap();
        let again = Tracing::compile(Some(&c), Some(&first)).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }
}
