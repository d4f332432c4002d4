//! `trellis-proxy-init validate` refuses bad flags with exit 2 before it listens or dials
//! anything (no root needed). The check itself runs on real packets in `packets.rs`.

use std::process::Command;

fn validate(args: &[&str]) -> (Option<i32>, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_trellis-proxy-init")).arg("validate").args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_are_named_and_exit_2() {
    for (args, message) in [
        (&["--probe-port", "15006"][..], "--probe-port 15006 is also a capture port"),
        (&["-p", "15002"][..], "--probe-port 15002 is also a capture port"),
        (&["--timeout=-5s"][..], "duration \"-5s\" is negative"),
        (&["--timeout", "soon"][..], "--timeout"),
        (&["-b", "8080", "-d", "8080"][..], "port 8080 is also excluded"),
        (&["-m", "NONE"][..], "-m: NONE means no redirect at all"),
        (&["-u", "3,x"][..], "-u: invalid value \"x\""),
        (&["-u", "99999999999"][..], "-u: invalid value \"99999999999\""),
        (&["--capture-dns", "--resolv-conf", "/nonexistent/resolv.conf"][..], "--resolv-conf: cannot read"),
        (&["-i", "10.0.0.0/33"][..], "-i: invalid value \"10.0.0.0/33\""),
    ] {
        let (code, stderr) = validate(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
