//! Access log formats: the mesh config's `accessLogFormat` (Envoy's format strings, and under
//! JSON encoding an object of them), as `trellis validate`, trellisd and the proxy read them.
//!
//! Properties: nothing panics; a parsed format has no empty text piece and no two text pieces
//! in a row; `check_format` accepts exactly what parses; a `%START_TIME(...)%` format renders
//! for any time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_api::access_log::format::{Command, Piece, parse};
use trellis_api::access_log::{check_format, json_fields, text_format};
use trellis_api::mesh::AccessLogEncoding;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = parse(text);
    if let Ok(format) = &parsed {
        let mut previous_text = false;
        for piece in &format.pieces {
            match piece {
                Piece::Text(t) => {
                    assert!(!t.is_empty() && !previous_text, "{:?}", format.pieces);
                    previous_text = true;
                }
                Piece::Op(op) => {
                    previous_text = false;
                    if let Command::StartTime(Some(time)) = &op.command {
                        let mut out = String::new();
                        time.render(0, &mut out);
                        time.render(u128::MAX, &mut out);
                    }
                }
            }
        }
    } else if let Err(e) = &parsed {
        assert!(e.operator.chars().count() <= 67, "{e}");
    }
    assert_eq!(
        check_format(Some(text), AccessLogEncoding::Text).is_ok(),
        parse(&text_format(Some(text))).is_ok()
    );
    if let Ok(fields) = json_fields(Some(text)) {
        assert!(!fields.is_empty());
        let _ = check_format(Some(text), AccessLogEncoding::Json);
    }
});
