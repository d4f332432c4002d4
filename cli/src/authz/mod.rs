//! `trellis authz check`: why a request to a workload would be allowed or denied. The
//! workload's policies come as its proxy gets them — from the control plane over xDS, or
//! resolved offline from Istio YAML by trellisd's own translation — and are compiled and
//! decided by the proxy's own code, so the answer is the proxy's.

mod fetch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue};
use trellis_identity::SpiffeId;
use trellis_proxy::security::authz::{Attributes, Authorization, HttpAttributes, RequestAuth};
use trellis_xds::config as pb;

const EXIT_CODES: &str = "\
Exit status:
  0  the request would be allowed
  1  the request would be denied
  2  usage error, or the policies could not be had or compiled";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Decide one request against a workload's AuthorizationPolicies, naming the policy and
    /// rule that decide it.
    Check(Args),
}

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// The workload's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The workload's labels, `key=value`, comma-separated or repeated.
    #[arg(long, short = 'l', value_delimiter = ',')]
    labels: Vec<String>,
    /// Resolve the policies from Istio YAML in this directory (what trellisd --config-dir
    /// would serve) instead of asking the control plane.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// With --config-dir: the mesh config (trust domain and aliases, extension providers).
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// The control plane's plaintext xDS address, asked as the workload's proxy would be.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:15010", env = "TRELLIS_XDS_ADDRESS")]
    control_plane: String,
    /// The caller's identity: a SPIFFE ID (`spiffe://cluster.local/ns/shop/sa/frontend`) or
    /// Istio's principal form without `spiffe://`. None: a plaintext caller.
    #[arg(long, value_name = "IDENTITY")]
    from: Option<String>,
    /// The caller's address.
    #[arg(long, default_value = "10.0.0.1")]
    source_ip: IpAddr,
    /// The workload's (container) port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Opaque TCP instead of HTTP (methods, paths and headers then play no part).
    #[arg(long)]
    tcp: bool,
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The path (the query is not part of it, as for the proxy).
    #[arg(long, default_value = "/")]
    path: String,
    /// The `:authority`.
    #[arg(long, default_value = "")]
    host: String,
    /// A request header, `name: value`; repeat for more.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The request's JWT principal (`<iss>/<sub>`), as RequestAuthentication would have proved.
    #[arg(long, value_name = "ISS/SUB")]
    request_principal: Option<String>,
}

pub fn run(command: &Command) -> ExitCode {
    let Command::Check(args) = command;
    match check(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("trellis authz check: {message}");
            ExitCode::from(2)
        }
    }
}

fn labels(list: &[String]) -> Result<BTreeMap<String, String>, String> {
    list.iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--labels: {l:?} is not key=value"))
        })
        .collect()
}

fn headers(list: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in list {
        let (name, value) =
            h.split_once(':').ok_or_else(|| format!("--header: {h:?} is not `name: value`"))?;
        let name = HeaderName::try_from(name.trim())
            .map_err(|_| format!("--header: {name:?} is not a header name"))?;
        let value = HeaderValue::try_from(value.trim())
            .map_err(|_| format!("--header: {value:?} is not a header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The caller's identity from `--from`.
fn caller(from: Option<&str>) -> Result<Option<(SpiffeId, String)>, String> {
    let Some(from) = from else { return Ok(None) };
    let uri = if from.starts_with("spiffe://") { from.to_owned() } else { format!("spiffe://{from}") };
    let id = SpiffeId::parse(&uri).map_err(|e| format!("--from: {e}"))?;
    let principal = uri.trim_start_matches("spiffe://").to_owned();
    Ok(Some((id, principal)))
}

fn check(args: &Args) -> Result<bool, String> {
    let labels = labels(&args.labels)?;
    let headers = headers(&args.headers)?;
    let caller = caller(args.from.as_deref())?;
    let policies = match &args.config_dir {
        Some(dir) => fetch::offline(dir, args.mesh_config.as_deref(), &args.namespace, &labels)?,
        None => fetch::from_control_plane(&args.control_plane, &args.namespace, &labels)?,
    };
    let authz = Authorization::compile(&policies)
        .map_err(|e| format!("the policies do not compile: {}: {}", e.field, e.message))?;
    println!("workload: namespace {} labels {}", args.namespace, describe_labels(&labels));
    if policies.is_empty() {
        println!("policies: none select it");
    }
    for p in &policies {
        let action = pb::authz_policy::Action::try_from(p.action).map(|a| a.as_str_name()).unwrap_or("?");
        let dry = if p.dry_run { " (dry run)" } else { "" };
        println!("policy: {}/{} {action}{dry}, {} rule(s)", p.namespace, p.name, p.rules.len());
    }
    let auth =
        args.request_principal.as_ref().map(|p| RequestAuth { principal: p.clone(), ..Default::default() });
    let host = if args.host.is_empty() {
        format!("{}:{}", labels.get("app").map_or("workload", String::as_str), args.port)
    } else {
        args.host.clone()
    };
    let path = args.path.split('?').next().unwrap_or("/");
    let attributes = Attributes {
        peer: caller.as_ref().map(|(id, _)| id),
        peer_principal: caller.as_ref().map(|(_, p)| p.as_str()),
        source_ip: args.source_ip,
        destination_ip: "127.0.0.1".parse().map_err(|_| "an address")?,
        destination_port: args.port,
        sni: None,
        http: (!args.tcp).then_some(HttpAttributes {
            method: &args.method,
            host: &host,
            path,
            headers: &headers,
            auth: auth.as_ref(),
        }),
    };
    let what = if args.tcp {
        format!("TCP to port {}", args.port)
    } else {
        format!("{} {path} on port {}", args.method, args.port)
    };
    let who = caller.as_ref().map_or("a plaintext caller".to_owned(), |(_, p)| p.clone());
    println!("request: {what} from {who}");
    if let Some(custom) = authz.custom(&attributes) {
        println!(
            "decision: CUSTOM: {}/rule {} asks provider {:?} first (its answer decides; if it allows, the rest follows)",
            custom.policy, custom.rule, custom.provider
        );
    }
    if let Some(trellis_proxy::security::authz::DecidedBy::Rule { policy, rule }) = authz.audit(&attributes) {
        println!("audit: recorded by {policy} rule {rule}");
    }
    if let Some(would) = authz.dry_run(&attributes) {
        println!("dry run: would be {would}");
    }
    let decision = authz.decide(&attributes);
    println!("decision: {decision}");
    Ok(decision.allowed)
}

fn describe_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
