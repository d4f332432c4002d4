//! Pod annotations (`trellis_api::annotations`), read by the injector, the CNI plugin and
//! proxy-init from whatever a pod's author wrote.
//!
//! Input: lines; a line whose first byte is `A` + i (`A`, `B`, ... `` ` ``) is the value of the
//! i-th known annotation name (`names::annotation::ALL[i]`), the rest of the line; any other line
//! is `name=value` as written (annotation keys start with a lower-case letter or a digit).
//!
//! Properties: nothing panics; every error names its annotation; values that parse print back
//! to text that parses to the same value (ports, CIDRs, quantities, modes, levels, status).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use trellis_api::annotations::names::annotation::ALL;
use trellis_api::annotations::*;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut annotations = BTreeMap::new();
    for line in text.split('\n') {
        let Some(&first) = line.as_bytes().first() else { continue };
        let (name, value) = match first.checked_sub(b'A').and_then(|i| ALL.get(usize::from(i))) {
            Some(name) => (name.to_string(), &line[1..]),
            None => match line.split_once('=') {
                Some((name, value)) => (name.to_owned(), value),
                None => continue,
            },
        };
        check_value(&name, value);
        annotations.insert(name, value.to_owned());
    }
    for error in validate_pod_annotations(&annotations) {
        assert!(annotations.contains_key(&error.annotation), "{error} names an annotation the pod has not");
        assert!(error.value.chars().count() <= 67, "{error} echoes too much");
    }
    let _ = TrafficAnnotations::from_annotations(&annotations);
    let _ = ReadinessAnnotations::from_annotations(&annotations);
    let _ = unknown_istio_annotations(&annotations);
    let _ = pod_inject_override(&annotations, &annotations);
});

/// Every single-value parser on `value`, with round trips where printing is cheap.
fn check_value(name: &str, value: &str) {
    let _ = parse_bool(name, value);
    let _ = parse_sidecar_inject(value);
    let _ = parse_namespace_injection(value);
    if let Ok(mode) = parse_interception_mode(value) {
        assert_eq!(parse_interception_mode(mode.as_str()), Ok(mode));
    }
    if let Ok(ports) = parse_port_list(name, value) {
        let printed = join(&ports);
        assert_eq!(parse_port_list(name, &printed), Ok(ports), "{value:?} printed as {printed:?}");
    }
    let _ = parse_port_selection(name, value);
    if let Ok(cidrs) = parse_cidr_list(name, value) {
        let printed = join(&cidrs);
        assert_eq!(parse_cidr_list(name, &printed), Ok(cidrs), "{value:?} printed as {printed:?}");
    }
    if let Ok(IpRangeSelection::Ranges(ranges)) = parse_ip_range_selection(name, value) {
        let _ = ranges.iter().any(|r| r.contains(&r.network()));
    }
    if let Ok(names) = parse_interface_list(name, value) {
        assert_eq!(parse_interface_list(name, &names.join(",")), Ok(names));
    }
    let _ = parse_single_port(name, value);
    let _ = parse_status_port(value);
    let _ = parse_non_negative_int(name, value);
    let _ = parse_positive_int(name, value);
    if let Ok(quantity) = Quantity::parse(value) {
        let _ = (quantity.is_negative(), quantity.as_f64(), quantity.to_units(), quantity.to_millis());
        assert_eq!(Quantity::parse(&quantity.to_string()), Ok(quantity.clone()));
    }
    let _ = parse_resource_quantity(name, value);
    if let Ok(level) = parse_log_level(value) {
        assert_eq!(parse_log_level(level.as_str()), Ok(level));
    }
    if let Ok(levels) = parse_component_log_levels(value) {
        let printed: Vec<String> = levels.iter().map(|(c, l)| format!("{c}:{l}")).collect();
        assert_eq!(parse_component_log_levels(&printed.join(",")), Ok(levels));
    }
    let _ = parse_image(value);
    let _ = parse_http_path(name, value);
    let _ = parse_container_name(name, value);
    let _ = parse_user_volumes(value);
    let _ = parse_user_volume_mounts(value);
    if let Ok(status) = SidecarStatus::parse(value) {
        assert_eq!(SidecarStatus::parse(&status.to_json()), Ok(status));
    }
    let _ = parse_proxy_config_with_unknown_fields(value);
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}
