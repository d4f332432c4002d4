//! `trellis demo-app`: the demo's tiny HTTP service. It answers every request with JSON naming
//! itself (name, version, pod), after calling each of its downstreams in turn and including their
//! answers, so one answer at the edge shows the whole path a request took — and which canary
//! subset served it. It can be told to fail or slow down a share of its requests, and passes a
//! downstream's failure on as 502, as a real service would.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::http_client::Pool;

/// How long one downstream call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers a traced request carries on to its downstream calls (applications must copy them
/// for a trace to span services; the mesh cannot): Istio's list for the W3C and B3 formats the
/// proxies read, with B3's debug flag.
const PROPAGATED: [&str; 9] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service's name, in every answer.
    #[arg(long)]
    name: String,
    /// The version, in every answer (which canary subset served a request).
    #[arg(long, default_value = "v1")]
    version: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A downstream to call on every request, in order (repeatable), e.g. http://catalog:8080/items.
    #[arg(long = "calls", value_name = "URL", value_parser = parse_call)]
    calls: Vec<Call>,
    /// Resolve NAME to IP without DNS (repeatable), like a hosts file: NAME=IP.
    #[arg(long = "resolve", value_name = "NAME=IP", value_parser = parse_resolve)]
    resolve: Vec<(String, IpAddr)>,
    /// Send every call to this address (the local proxy, in explicit mode), keeping the URL's
    /// host and port as the request's authority.
    #[arg(long, value_name = "ADDR")]
    via: Option<SocketAddr>,
    /// Share of requests answered 503 at once, from 0 to 1.
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    fail_rate: f64,
    /// Delay added to a share of requests (--delay-rate), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
    /// Share of requests delayed by --delay-ms, from 0 to 1 (1 when only --delay-ms is given).
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    delay_rate: Option<f64>,
    /// Once sent SIGUSR1, answer 503 to every request from then on (a replica gone bad:
    /// `trellis demo` sends it halfway through the run).
    #[arg(long)]
    fail_on_signal: bool,
}

/// A downstream: where to connect and what to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Call {
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_call(text: &str) -> Result<Call, String> {
    let uri: Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".to_owned());
    }
    let authority = uri.authority().ok_or("the URL names no host")?;
    if authority.as_str().contains('@') {
        return Err("user information is not supported".to_owned());
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the URL names no host".to_owned());
    }
    let port = match authority.port() {
        None => 80,
        Some(p) => p.as_str().parse::<u16>().ok().filter(|p| *p > 0).ok_or("the port is not 1-65535")?,
    };
    let path = uri.path_and_query().map(|p| p.as_str()).filter(|p| !p.is_empty()).unwrap_or("/");
    Ok(Call { url: text.to_owned(), host: host.to_owned(), port, path: path.to_owned() })
}

fn parse_resolve(text: &str) -> Result<(String, IpAddr), String> {
    let (name, ip) = text.split_once('=').ok_or("write NAME=IP")?;
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    let ip = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
    Ok((name.to_ascii_lowercase(), ip))
}

fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text.parse().map_err(|_| "not a number".to_owned())?;
    if !(0.0..=1.0).contains(&share) {
        return Err("not between 0 and 1".to_owned());
    }
    Ok(share)
}

/// What the app knows while serving.
struct App {
    name: String,
    version: String,
    pod: Option<String>,
    fail_rate: f64,
    delay: Duration,
    delay_rate: f64,
    /// Set by SIGUSR1 with --fail-on-signal: every request fails.
    broken: AtomicBool,
    /// Each downstream with the connections to it.
    calls: Vec<(Call, Pool)>,
}

pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis demo-app: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let resolve: BTreeMap<String, IpAddr> = args.resolve.iter().cloned().collect();
    let mut calls = Vec::new();
    for call in &args.calls {
        let target = match args.via {
            Some(via) => via,
            None => address_of(call, &resolve).await?,
        };
        calls.push((call.clone(), Pool::new(target)));
    }
    let app = Arc::new(App {
        name: args.name,
        version: args.version,
        // Set by the pod's manifest through the downward API.
        pod: std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()),
        fail_rate: args.fail_rate,
        delay: Duration::from_millis(args.delay_ms),
        delay_rate: args.delay_rate.unwrap_or(if args.delay_ms > 0 { 1.0 } else { 0.0 }),
        broken: AtomicBool::new(false),
        calls,
    });
    if args.fail_on_signal {
        let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .map_err(|e| format!("cannot watch SIGUSR1: {e}"))?;
        let app = app.clone();
        tokio::spawn(async move {
            if usr1.recv().await.is_some() {
                println!("demo-app {}: SIGUSR1: answering 503 to every request from now on", app.name);
                app.broken.store(true, Ordering::Relaxed);
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    println!("demo-app {} {} listening on {}", app.name, app.version, args.listen);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Ok((stream, _)) = accepted else { continue };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(&app, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Where a call's host is: the --resolve table, an address literal, or DNS.
async fn address_of(call: &Call, resolve: &BTreeMap<String, IpAddr>) -> Result<SocketAddr, String> {
    if let Some(ip) = resolve.get(&call.host.to_ascii_lowercase()) {
        return Ok(SocketAddr::new(*ip, call.port));
    }
    if let Ok(ip) = call.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, call.port));
    }
    tokio::net::lookup_host((call.host.as_str(), call.port))
        .await
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| {
            format!("--calls {}: cannot resolve {:?} (give --resolve NAME=IP)", call.url, call.host)
        })
}

async fn answer(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() == "/healthz" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let mut me = json!({"name": app.name, "version": app.version});
    if let Some(pod) = &app.pod {
        me["pod"] = pod.as_str().into();
    }
    if app.broken.load(Ordering::Relaxed) || rand::random::<f64>() < app.fail_rate {
        me["error"] = "injected failure".into();
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &me);
    }
    if !app.delay.is_zero() && rand::random::<f64>() < app.delay_rate {
        tokio::time::sleep(app.delay).await;
    }
    let propagated: HeaderMap = request
        .headers()
        .iter()
        .filter(|(name, _)| PROPAGATED.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut calls = Vec::new();
    let mut status = StatusCode::OK;
    for (call, pool) in &app.calls {
        let mut record = json!({"url": call.url});
        match pool.get(&call.authority(), &call.path, &propagated, CALL_TIMEOUT).await {
            Ok(answer) => {
                record["status"] = answer.status.as_u16().into();
                record["answer"] = serde_json::from_slice(&answer.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into_owned()));
                if !answer.status.is_success() {
                    status = StatusCode::BAD_GATEWAY;
                }
            }
            Err(e) => {
                record["error"] = e.into();
                status = StatusCode::BAD_GATEWAY;
            }
        }
        calls.push(record);
        if status != StatusCode::OK {
            // A failed dependency fails the request; later calls are not made.
            break;
        }
    }
    if !calls.is_empty() {
        me["calls"] = Value::Array(calls);
    }
    json_response(status, &me)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, String> {
        let argv = ["demo-app", "--name", "catalog"].iter().chain(extra);
        Cli::try_parse_from(argv).map(|c| c.args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_are_read() {
        let args = parse(&[
            "--version",
            "v2",
            "--listen",
            "0.0.0.0:9090",
            "--calls",
            "http://inventory:8080/stock?x=1",
            "--calls",
            "http://10.0.0.1",
            "--resolve",
            "Inventory=10.96.0.30",
            "--via",
            "127.0.0.1:15001",
            "--fail-rate",
            "0.25",
            "--delay-ms",
            "40",
        ])
        .unwrap();
        assert_eq!((args.name.as_str(), args.version.as_str()), ("catalog", "v2"));
        assert_eq!(args.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            args.calls[0],
            Call {
                url: "http://inventory:8080/stock?x=1".into(),
                host: "inventory".into(),
                port: 8080,
                path: "/stock?x=1".into()
            }
        );
        assert_eq!((args.calls[1].authority(), args.calls[1].path.as_str()), ("10.0.0.1:80".to_owned(), "/"));
        assert_eq!(args.resolve, [("inventory".to_owned(), "10.96.0.30".parse().unwrap())]);
        assert_eq!(args.via, Some("127.0.0.1:15001".parse().unwrap()));
        assert_eq!((args.fail_rate, args.delay_ms, args.delay_rate), (0.25, 40, None));
    }

    #[test]
    fn bad_values_name_the_flag_and_the_value() {
        for (flag, value, why) in [
            ("--calls", "ftp://x/", "only http:// URLs"),
            ("--calls", "http://x:0/", "the port is not 1-65535"),
            ("--calls", "http://u@x/", "user information"),
            ("--calls", "not a url", "not a URL"),
            ("--calls", "/just/a/path", "only http:// URLs"),
            ("--resolve", "inventory", "write NAME=IP"),
            ("--resolve", "=10.0.0.1", "the name is empty"),
            ("--resolve", "inventory=ten", "\"ten\" is not an IP address"),
            ("--fail-rate", "1.5", "not between 0 and 1"),
            ("--fail-rate", "-0.1", "not between 0 and 1"),
            ("--fail-rate", "half", "not a number"),
            ("--delay-rate", "2", "not between 0 and 1"),
            ("--delay-ms", "-3", "-3"),
            ("--listen", "8080", "8080"),
            ("--via", "proxy", "proxy"),
        ] {
            let err = parse(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(err.contains(flag), "{flag} {value}: {err}");
            assert!(err.contains(value), "{flag} {value}: {err}");
            assert!(err.contains(why), "{flag} {value}: {err}");
        }
        assert!(Cli::try_parse_from(["demo-app"]).err().unwrap().to_string().contains("--name"));
    }

    /// The app on a real socket: its answer names it and nests its downstream's, a failing
    /// downstream turns into 502, and a fail rate of 1 fails every request with 503. The trace
    /// headers of a request go on to the calls it makes, and no other header does.
    #[tokio::test]
    async fn answers_nest_downstreams_trace_headers_go_on_and_failures_propagate() {
        async fn start(extra: &[&str]) -> SocketAddr {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let listen = port.to_string();
            let mut argv = vec!["--listen", listen.as_str()];
            argv.extend(extra);
            let args = parse(&argv).unwrap();
            tokio::spawn(serve(args));
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(port).await.is_ok() {
                    return port;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the app did not listen on {port}");
        }
        let get = async |addr: SocketAddr| {
            let answer = crate::http_client::get_once(addr, "/", Duration::from_secs(5)).await.unwrap();
            (answer.status, serde_json::from_slice::<Value>(&answer.body).unwrap())
        };
        let leaf = start(&["--version", "v9"]).await;
        let leaf_url = format!("http://leaf.test:{}/leaf", leaf.port());
        let resolve = "leaf.test=127.0.0.1";
        let root = start(&["--calls", &leaf_url, "--resolve", resolve]).await;
        let (status, body) = get(root).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "catalog");
        assert_eq!(body["calls"][0]["status"], 200);
        assert_eq!(body["calls"][0]["answer"]["version"], "v9");

        // The trace headers of the incoming request go on to the downstream call, others not.
        let seen: std::sync::Arc<std::sync::Mutex<Vec<HeaderMap>>> = Default::default();
        let recorder = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    seen.lock().unwrap().push(request.headers().clone());
                    async { Ok::<_, Infallible>(json_response(StatusCode::OK, &json!({"pod": "leaf"}))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            addr
        };
        let url = format!("http://127.0.0.1:{}/next", recorder.port());
        let middle = start(&["--calls", &url]).await;
        let pool = Pool::new(middle);
        let mut headers = HeaderMap::new();
        for name in PROPAGATED {
            headers.insert(name, http::HeaderValue::from_static("v"));
        }
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        headers.insert("x-user", "secret".parse().unwrap());
        let answer = pool.get("middle", "/", &headers, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let got = seen.lock().unwrap().pop().unwrap();
        for name in PROPAGATED {
            assert_eq!(got.get(name), headers.get(name), "{name}");
        }
        assert!(got.get("x-user").is_none());

        let failing = start(&["--fail-rate", "1"]).await;
        assert_eq!(get(failing).await.0, StatusCode::SERVICE_UNAVAILABLE);
        let url = format!("http://127.0.0.1:{}/", failing.port());
        let caller = start(&["--calls", &url]).await;
        let (status, body) = get(caller).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body["calls"][0]["answer"]["error"], "injected failure");
    }
}
