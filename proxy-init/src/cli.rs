//! The `trellis-proxy-init` command line: programs the pod's redirect (or, with `--dry-run`,
//! prints it), removes it with `--cleanup`, and with `validate` checks that someone else (the
//! CNI plugin) did. A library entry point, so that `trellis demo` can run it from its own
//! executable; the `trellis-proxy-init` binary is a thin wrapper around [`run`].

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use trellis_api::annotations::{self, AnnotationError, InterceptionMode};

use crate::apply::{self, Backend};
use crate::resolv;
use crate::rules::build;
use crate::settings::{DEFAULT_TPROXY_MARK, DEFAULT_TPROXY_ROUTE_TABLE, DnsCapture, Interception, Settings};
use crate::validate::{self, EXIT_NOT_REDIRECTED, PROBE_PORT};
use crate::{iptables, nft};

#[derive(Clone, Copy, ValueEnum)]
enum BackendFlag {
    Iptables,
    Nft,
}

impl From<BackendFlag> for Backend {
    fn from(flag: BackendFlag) -> Backend {
        match flag {
            BackendFlag::Iptables => Backend::Iptables,
            BackendFlag::Nft => Backend::Nft,
        }
    }
}

#[derive(Parser)]
#[command(name = "trellis-proxy-init", version, about = "Trellis traffic redirect")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    redirect: RedirectFlags,
    /// Default: nft when the binary and kernel support are there, else iptables.
    #[arg(long, value_enum)]
    backend: Option<BackendFlag>,
    /// Print exactly what would be applied, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove every rule, chain and table of ours, with either backend.
    #[arg(long)]
    cleanup: bool,
    /// Work in this network namespace (e.g. /var/run/netns/NAME) instead of the current one.
    #[arg(long)]
    netns: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the redirect is in place (the CNI flow); run as the proxy's user with the
    /// same flags the redirect was written with. Exits 126 when it is not.
    Validate {
        #[command(flatten)]
        redirect: RedirectFlags,
        /// A port nothing listens on, dialled to see the redirect at work.
        #[arg(long, default_value_t = PROBE_PORT)]
        probe_port: u16,
        /// How long to keep trying (Go duration, e.g. 5s).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    trellis_api::primitives::parse_go_duration(text)
}

/// Flags named after istio-iptables' so users recognise them.
#[derive(clap::Args)]
struct RedirectFlags {
    /// Outbound capture port.
    #[arg(short = 'p', long = "proxy-port", default_value_t = 15001)]
    proxy_port: u16,
    /// Inbound capture port.
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    inbound_capture_port: u16,
    /// The proxy's users (comma-separated), whose traffic is never captured.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    proxy_uid: String,
    /// The proxy's groups (comma-separated), whose traffic is never captured.
    #[arg(short = 'g', long = "proxy-gid", default_value = "1337")]
    proxy_gid: String,
    /// Inbound interception mode: REDIRECT (NAT) or TPROXY (the app sees the real client).
    #[arg(short = 'm', long = "inbound-interception-mode", default_value = "REDIRECT")]
    interception_mode: String,
    /// TPROXY: the mark of inbound packets, routed to loopback by its own table.
    #[arg(short = 't', long = "inbound-tproxy-mark", default_value_t = DEFAULT_TPROXY_MARK)]
    tproxy_mark: u32,
    /// TPROXY: the routing table that delivers marked packets locally.
    #[arg(short = 'r', long = "inbound-tproxy-route-table", default_value_t = DEFAULT_TPROXY_ROUTE_TABLE)]
    tproxy_route_table: u32,
    /// Outbound CIDRs to capture (comma-separated), `*` for all, empty for none.
    #[arg(short = 'i', long = "include-outbound-cidrs", default_value = "*")]
    include_outbound_cidrs: String,
    /// Outbound CIDRs never captured.
    #[arg(short = 'x', long = "exclude-outbound-cidrs", default_value = "")]
    exclude_outbound_cidrs: String,
    /// Inbound ports to capture, `*` for all, empty for none.
    #[arg(short = 'b', long = "include-inbound-ports", default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never captured (15008, 15090, 15021 and 15020 never are).
    #[arg(short = 'd', long = "exclude-inbound-ports", default_value = "")]
    exclude_inbound_ports: String,
    /// Outbound ports never captured.
    #[arg(short = 'o', long = "exclude-outbound-ports", default_value = "")]
    exclude_outbound_ports: String,
    /// Outbound ports always captured, whatever their address.
    #[arg(short = 'q', long = "include-outbound-ports", default_value = "")]
    include_outbound_ports: String,
    /// Interfaces whose traffic is never captured.
    #[arg(short = 'c', long = "exclude-interfaces", default_value = "")]
    exclude_interfaces: String,
    /// KubeVirt interfaces: what arrives on them is captured as outbound traffic, never as
    /// inbound.
    #[arg(short = 'k', long = "kubevirt-interfaces", default_value = "")]
    kubevirt_interfaces: String,
    /// Send the app's DNS (TCP and UDP port 53) to the pod's nameservers to the proxy on
    /// 15053; the proxy's own DNS is untouched.
    #[arg(long, visible_alias = "redirect-dns")]
    capture_dns: bool,
    /// With DNS capture: take every query on port 53, not only those to the pod's
    /// nameservers.
    #[arg(long)]
    capture_all_dns: bool,
    /// Where the pod's nameservers are listed.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: std::path::PathBuf,
    /// Also write the IPv6 rule set.
    #[arg(long)]
    ipv6: bool,
}

/// The settings the flags describe, checked; warnings are printed.
fn checked_settings(args: &RedirectFlags) -> Result<Settings, String> {
    let settings = settings(args)?;
    let warnings = settings.check().map_err(|e| e.to_string())?;
    warnings.iter().for_each(|w| eprintln!("trellis-proxy-init: warning: {w}"));
    Ok(settings)
}

/// istio-iptables splits its lists on commas and drops empty entries, so a trailing comma
/// (`6000,7000,`) is accepted there; so it is here.
fn lenient(list: &str) -> String {
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect::<Vec<_>>().join(",")
}

fn id_list(flag: &str, list: &str) -> Result<Vec<u32>, String> {
    lenient(list)
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| e.parse::<u32>().map_err(|_| format!("{flag}: invalid value {e:?}: expected a numeric id")))
        .collect()
}

fn settings(args: &RedirectFlags) -> Result<Settings, String> {
    // The annotation parsers say "annotation X"; here the same checks are about flags.
    fn flag(name: &'static str) -> impl Fn(AnnotationError) -> String {
        move |e| format!("{name}: invalid value {:?}: {}", e.value, e.reason)
    }
    let interception =
        match annotations::parse_interception_mode(&args.interception_mode).map_err(flag("-m"))? {
            InterceptionMode::Redirect => Interception::Redirect,
            InterceptionMode::Tproxy => {
                Interception::Tproxy { mark: args.tproxy_mark, route_table: args.tproxy_route_table }
            }
            InterceptionMode::None => {
                return Err("-m: NONE means no redirect at all; do not run trellis-proxy-init".to_owned());
            }
        };
    let capture_dns = match (args.capture_dns, args.capture_all_dns) {
        (false, _) => DnsCapture::Off,
        (true, true) => DnsCapture::All,
        (true, false) => {
            let (servers, warnings) =
                resolv::nameservers(&args.resolv_conf).map_err(|e| format!("--resolv-conf: {e}"))?;
            warnings.iter().for_each(|w| eprintln!("trellis-proxy-init: warning: {w}"));
            DnsCapture::Servers(servers)
        }
    };
    Ok(Settings {
        proxy_port: args.proxy_port,
        inbound_capture_port: args.inbound_capture_port,
        proxy_uids: id_list("-u", &args.proxy_uid)?,
        proxy_gids: id_list("-g", &args.proxy_gid)?,
        interception,
        include_outbound_cidrs: annotations::parse_ip_range_selection(
            "-i",
            &lenient(&args.include_outbound_cidrs),
        )
        .map_err(flag("-i"))?,
        exclude_outbound_cidrs: annotations::parse_cidr_list("-x", &lenient(&args.exclude_outbound_cidrs))
            .map_err(flag("-x"))?,
        include_inbound_ports: annotations::parse_port_selection("-b", &lenient(&args.include_inbound_ports))
            .map_err(flag("-b"))?,
        exclude_inbound_ports: annotations::parse_port_list("-d", &lenient(&args.exclude_inbound_ports))
            .map_err(flag("-d"))?,
        include_outbound_ports: annotations::parse_port_list("-q", &lenient(&args.include_outbound_ports))
            .map_err(flag("-q"))?,
        exclude_outbound_ports: annotations::parse_port_list("-o", &lenient(&args.exclude_outbound_ports))
            .map_err(flag("-o"))?,
        exclude_interfaces: annotations::parse_interface_list("-c", &lenient(&args.exclude_interfaces))
            .map_err(flag("-c"))?,
        kubevirt_interfaces: annotations::parse_interface_list("-k", &lenient(&args.kubevirt_interfaces))
            .map_err(flag("-k"))?,
        capture_dns,
        ipv6: args.ipv6,
    })
}

/// Runs proxy-init with a command line (`args[0]` is the program name), as `main` would.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    if let Some(Command::Validate { redirect, probe_port, timeout }) = &args.command {
        return run_validate(redirect, *probe_port, *timeout);
    }
    let netns = args.netns.as_deref();
    if args.cleanup {
        return match apply::cleanup(netns) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis-proxy-init: cleanup: {e}");
                ExitCode::from(1)
            }
        };
    }
    let settings = match checked_settings(&args.redirect) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trellis-proxy-init: {e}");
            return ExitCode::from(2);
        }
    };
    let set = build(&settings);
    let backend = args.backend.map(Backend::from).unwrap_or_else(|| apply::detect_backend(netns));
    if args.dry_run {
        for command in set.route_commands() {
            println!("# {command}");
        }
        match backend {
            Backend::Nft => print!("{}", nft::script(&set)),
            Backend::Iptables => {
                for family in &set.families {
                    println!("# {:?}", family.family);
                    print!("{}", iptables::restore_payload(family));
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    match apply::apply(&set, backend, netns) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-proxy-init: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_validate(flags: &RedirectFlags, probe_port: u16, timeout: Duration) -> ExitCode {
    let settings = match checked_settings(flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("trellis-proxy-init: validate: {e}");
            return ExitCode::from(2);
        }
    };
    match validate::validate(&settings, probe_port, timeout) {
        Ok(passed) => {
            for p in passed {
                println!(
                    "validate: a connection to {} arrived on {}: the redirect is in place",
                    p.target, p.arrived_on
                );
            }
            ExitCode::SUCCESS
        }
        Err(e @ validate::ValidateError::ProbePortInUse(_)) => {
            eprintln!("trellis-proxy-init: validate: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("trellis-proxy-init: validate: {e}");
            ExitCode::from(EXIT_NOT_REDIRECTED)
        }
    }
}
