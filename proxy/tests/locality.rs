//! Locality-aware load balancing over real sockets: upstreams in several localities, the
//! proxy's own locality in its configuration. Traffic stays in the proxy's zone while it has
//! healthy endpoints and fails over, level by level, as outlier detection ejects them (and only
//! with outlier detection, as in Istio); a level's load spills in proportion to its health;
//! `distribute` weights hold within a binomial bound; `failoverPriority` orders by labels.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Behaviour, Client, Scripted, TestProxy};
use http::Version;

/// An upstream, its locality (`region/zone/subzone`) and labels (YAML flow map).
struct Ep<'a>(&'a Scripted, &'a str, &'a str);

fn yaml_locality(text: &str) -> String {
    let mut parts = text.split('/');
    let mut next = || parts.next().unwrap_or_default().to_owned();
    let (region, zone, subzone) = (next(), next(), next());
    format!("{{ region: '{region}', zone: '{zone}', subzone: '{subzone}' }}")
}

/// The `api` service, round robin over `endpoints`, for a proxy at `me` (with `top`, more
/// top-level settings such as workloadLabels), and `cluster` (outlier detection, locality_lb).
fn config(me: &str, top: &str, cluster: &str, endpoints: &[Ep<'_>]) -> String {
    let list: String = endpoints
        .iter()
        .map(|Ep(server, locality, labels)| {
            format!(
                "      - {{ address: 127.0.0.1, port: {}, locality: {}, labels: {labels} }}\n",
                server.addr.port(),
                yaml_locality(locality)
            )
        })
        .collect();
    format!(
        r#"
locality: {me}
{top}
services:
  - name: api.test.svc.cluster.local
    aliases: [api]
    ports: [{{ port: 80, protocol: HTTP }}]
virtualHosts:
  - name: api.test.svc.cluster.local:80
    routes:
      - name: all
        forward: {{ clusters: [{{ cluster: api }}] }}
clusters:
  - name: api
    service: api.test.svc.cluster.local
    loadBalancer: {{ policy: ROUND_ROBIN }}
{cluster}
endpoints:
  - service: api.test.svc.cluster.local
    endpoints:
{list}"#,
        me = yaml_locality(me)
    )
}

/// Outlier detection that ejects after two 5xx in a row, for `ejection`, whatever the share.
fn outlier(ejection: &str) -> String {
    format!(
        "    outlierDetection: {{ consecutive5xxErrors: 2, interval: 0.05s, baseEjectionTime: {ejection}, maxEjectionPercent: 100 }}"
    )
}

async fn start(name: &str) -> Scripted {
    Scripted::start(name, Behaviour::Status(200)).await
}

/// Sends `n` requests; counts the answers by upstream name.
async fn spread(client: &mut Client, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let answer = client.get("api", "/").await;
        *counts.entry(answer.text()).or_default() += 1;
    }
    counts
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_owned(), n)])
}

fn is_ejected(proxy: &TestProxy, addr: SocketAddr) -> bool {
    let snapshot = proxy.running.proxy.config.load();
    let cluster = &snapshot.clusters["api"];
    let detector = cluster.outlier.as_ref().expect("outlier detection is configured");
    detector.refresh();
    let index = cluster.balancer.targets().iter().position(|t| t.addr == addr).expect("an endpoint");
    detector.health()[index].ejected
}

/// Makes `server` fail and sends requests until outlier detection ejects it.
async fn fail_until_ejected(proxy: &TestProxy, client: &mut Client, server: &Scripted) {
    server.set(Behaviour::Status(500));
    for _ in 0..50 {
        client.get("api", "/").await;
        if is_ejected(proxy, server.addr) {
            return;
        }
    }
    panic!("{} was not ejected after 50 requests", server.name);
}

/// A fixed tolerance of 4.5 standard deviations of the binomial count (a correct share fails
/// it about once in 150,000 runs).
fn assert_binomial(count: usize, n: usize, percent: f64, what: &str) {
    let p = percent / 100.0;
    let expected = n as f64 * p;
    let tolerance = 4.5 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (count as f64 - expected).abs() <= tolerance,
        "{what}: {count} of {n}, expected {expected} ± {tolerance:.1}"
    );
}

#[tokio::test]
async fn traffic_stays_in_the_zone_then_fails_over_zone_region_failover_region_and_comes_back() {
    let (local, zone_b, europe, asia) =
        (start("local").await, start("zone-b").await, start("europe").await, start("asia").await);
    let endpoints = [
        Ep(&asia, "ap-south/x", "{}"),
        Ep(&europe, "eu-west/x", "{}"),
        Ep(&zone_b, "us-east/b", "{}"),
        Ep(&local, "us-east/a", "{}"),
    ];
    let cluster =
        format!("{}\n    localityLb: {{ failover: [{{ from: us-east, to: eu-west }}] }}", outlier("5s"));
    let proxy = TestProxy::start(&config("us-east/a", "", &cluster, &endpoints)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;

    // Healthy: round robin would spread over four; locality keeps it all in us-east/a.
    assert_eq!(spread(&mut client, 40).await, only("local", 40));
    let (_, clusters) = proxy.admin_get("/clusters").await;
    for (server, level) in [(&local, 0), (&zone_b, 1), (&europe, 2), (&asia, 3)] {
        let line = format!("api::{}::priority::{level}", server.addr);
        assert!(clusters.contains(&line), "{line} in\n{clusters}");
    }

    // The zone's one endpoint ejected: the same region's other zone.
    fail_until_ejected(&proxy, &mut client, &local).await;
    assert_eq!(spread(&mut client, 20).await, only("zone-b", 20));
    // The region's last one ejected: the failover region, never the others.
    fail_until_ejected(&proxy, &mut client, &zone_b).await;
    assert_eq!(spread(&mut client, 20).await, only("europe", 20));
    assert_eq!(asia.count(), 0);

    // Healthy again: once its ejection ends, traffic is back home.
    local.set(Behaviour::Status(200));
    zone_b.set(Behaviour::Status(200));
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get("api", "/").await.text() != "local" {
        assert!(Instant::now() < deadline, "traffic never came back to us-east/a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(spread(&mut client, 20).await, only("local", 20));
}

#[tokio::test]
async fn a_levels_load_spills_over_in_proportion_to_its_health() {
    let (a1, a2, b1) = (start("a1").await, start("a2").await, start("b1").await);
    let endpoints = [Ep(&a1, "us-east/a", "{}"), Ep(&a2, "us-east/a", "{}"), Ep(&b1, "us-east/b", "{}")];
    let cluster = format!("{}\n    localityLb: {{}}", outlier("60s"));
    let proxy = TestProxy::start(&config("us-east/a", "", &cluster, &endpoints)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    let healthy = spread(&mut client, 40).await;
    assert_eq!((healthy.get("a1"), healthy.get("a2"), healthy.get("b1")), (Some(&20), Some(&20), None));

    // Half of level 0 healthy: its health is 50 % × 1.4 = 70 %, and 30 % spills to level 1
    // (Envoy's priority load).
    fail_until_ejected(&proxy, &mut client, &a1).await;
    const N: usize = 2000;
    let counts = spread(&mut client, N).await;
    assert_eq!(counts.get("a1"), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), N);
    assert_binomial(counts.get("b1").copied().unwrap_or(0), N, 30.0, "spilled to us-east/b");
}

#[tokio::test]
async fn without_outlier_detection_no_locality_preference_applies() {
    let (local, zone_b, europe) = (start("local").await, start("zone-b").await, start("europe").await);
    let endpoints =
        [Ep(&local, "us-east/a", "{}"), Ep(&zone_b, "us-east/b", "{}"), Ep(&europe, "eu-west/x", "{}")];
    let cluster = "    localityLb: { failover: [{ from: us-east, to: eu-west }] }";
    let proxy = TestProxy::start(&config("us-east/a", "", cluster, &endpoints)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    // As in Istio: without outlier detection no endpoint is ever unhealthy, so every endpoint
    // is treated alike (round robin here).
    let counts = spread(&mut client, 30).await;
    assert_eq!(counts, BTreeMap::from([("europe".into(), 10), ("local".into(), 10), ("zone-b".into(), 10)]));
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(!clusters.contains("::priority::"), "{clusters}");
}

#[tokio::test]
async fn distribute_splits_by_weight_and_sends_nothing_outside_its_localities() {
    let (local, zone_b, europe, asia) =
        (start("local").await, start("zone-b").await, start("europe").await, start("asia").await);
    let endpoints = [
        Ep(&local, "us-east/a/rack-1", "{}"),
        Ep(&zone_b, "us-east/b/rack-9", "{}"),
        Ep(&europe, "eu-west/x", "{}"),
        Ep(&asia, "ap-south/x", "{}"),
    ];
    let cluster = r#"    localityLb:
      distribute:
        - { from: "eu-west/*", to: { "eu-west/*": 100 } }
        - { from: "us-east/a/*", to: { "us-east/a/*": 60, "us-east/b/*": 25, "eu-west/*": 15 } }"#;
    let proxy = TestProxy::start(&config("us-east/a/rack-1", "", cluster, &endpoints)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    const N: usize = 2000;
    let counts = spread(&mut client, N).await;
    let count = |name: &str| counts.get(name).copied().unwrap_or(0);
    assert_eq!(count("asia"), 0, "no weight for ap-south: {counts:?}");
    assert_eq!(count("local") + count("zone-b") + count("europe"), N);
    assert_binomial(count("local"), N, 60.0, "us-east/a");
    assert_binomial(count("zone-b"), N, 25.0, "us-east/b");
    assert_binomial(count("europe"), N, 15.0, "eu-west");
    let (_, clusters) = proxy.admin_get("/clusters").await;
    assert!(clusters.contains(&format!("api::{}::locality_weight::15", europe.addr)), "{clusters}");
    assert!(clusters.contains(&format!("api::{}::locality_weight::0", asia.addr)), "{clusters}");

    // A proxy that moves (a new configuration with another locality) follows its own rule.
    proxy.reload(&config("eu-west/y", "", cluster, &endpoints)).await;
    assert_eq!(spread(&mut client, 20).await, only("europe", 20));
}

#[tokio::test]
async fn failover_priority_orders_endpoints_by_their_labels() {
    let (same, other_zone, other_net) =
        (start("same").await, start("other-zone").await, start("other-net").await);
    let net = "topology.istio.io/network";
    let endpoints = [
        Ep(&other_net, "us-east/a", &format!("{{ {net}: n2 }}")),
        Ep(&other_zone, "us-east/b", &format!("{{ {net}: n1 }}")),
        Ep(&same, "us-east/a", &format!("{{ {net}: n1 }}")),
    ];
    // The network first, then the zone (a topology label, from the localities).
    let cluster = format!(
        "{}\n    localityLb: {{ failoverPriority: [{net}, topology.kubernetes.io/zone] }}",
        outlier("60s")
    );
    let me = format!("workloadLabels: {{ {net}: n1, app: web }}");
    let proxy = TestProxy::start(&config("us-east/a", &me, &cluster, &endpoints)).await;
    let mut client = Client::connect(proxy.outbound(), Version::HTTP_11).await;
    assert_eq!(spread(&mut client, 20).await, only("same", 20));
    fail_until_ejected(&proxy, &mut client, &same).await;
    assert_eq!(spread(&mut client, 20).await, only("other-zone", 20), "same network first");
    fail_until_ejected(&proxy, &mut client, &other_zone).await;
    assert_eq!(spread(&mut client, 20).await, only("other-net", 20));
}

#[tokio::test]
async fn bad_localities_and_settings_are_refused_naming_their_field() {
    let local = start("local").await;
    let cluster = format!("{}\n    localityLb: {{}}", outlier("5s"));
    let good = config("us-east/a", "", &cluster, &[Ep(&local, "us-east/a", "{}")]);
    let compile = |text: &str| {
        trellis_proxy::config::parse(text)
            .and_then(|config| trellis_proxy::config::Snapshot::compile(config, 1, None).map(drop))
    };
    assert_eq!(compile(&good), Ok(()));
    let cases = [
        (good.replacen("region: 'us-east', zone: 'a'", "region: '', zone: 'a'", 1), "locality"),
        (
            good.replace(
                "localityLb: {}",
                "localityLb: { distribute: [{ from: 'us-*', to: { '*': 100 } }] }",
            ),
            "clusters[0].locality_lb.distribute[0].from",
        ),
        (
            good.replace("localityLb: {}", "localityLb: { failover: [{ from: us-east/a, to: eu-west }] }"),
            "clusters[0].locality_lb.failover[0]",
        ),
        (
            good.replace("subzone: '' }, labels", "subzone: 'a/b' }, labels"),
            "clusters[0].service: endpoint 0 (127.0.0.1): locality",
        ),
    ];
    for (bad, field) in cases {
        let error = compile(&bad).expect_err("a bad locality is refused");
        assert_eq!(error.field, field, "{error}");
    }
}
