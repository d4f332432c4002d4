//! trellisd's static token file (`--token-auth-file`, Kubernetes' CSV format:
//! `trellis_control_plane::ca::authenticate::parse_token_file`), the caller's user name it leads
//! to (`service_account`), and the bearer token read from request metadata (`bearer_token`).
//!
//! Properties: nothing panics; every token in the table is non-empty and trimmed, every user
//! non-empty; a table written back out as CSV (quoted) reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};
use trellis_control_plane::ca::authenticate::{bearer_token, parse_token_file, service_account};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(table) = parse_token_file(text) {
        let mut csv = String::new();
        for (token, user) in &table {
            assert!(!token.is_empty() && token.trim() == token, "{token:?}");
            assert!(!user.is_empty());
            let _ = service_account(user);
            csv.push_str(&format!("{},{},uid\n", quote(token), quote(user)));
        }
        assert_eq!(parse_token_file(&csv).as_ref(), Ok(&table), "{csv}");
    }
    for line in text.lines() {
        let _ = service_account(line);
        if let Ok(value) = MetadataValue::try_from(line) {
            let mut metadata = MetadataMap::new();
            metadata.insert("authorization", value);
            let _ = bearer_token(&metadata);
        }
    }
});

fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}
