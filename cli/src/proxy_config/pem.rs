//! Reads a PEM certificate the proxy's `/certs` page carries (the root of its chain), for the
//! root's own serial and validity.

use x509_parser::pem::Pem;

pub struct Described {
    /// Hex, as `openssl x509 -serial` prints it (and as `/certs` gives the leaf's).
    pub serial: String,
    pub subject: String,
    /// Seconds since the Unix epoch (0 for a date before it).
    pub not_before: u64,
    pub not_after: u64,
}

/// The first certificate of `pem_text`.
pub fn describe(pem_text: &str) -> Result<Described, String> {
    let block = Pem::iter_from_buffer(pem_text.as_bytes())
        .next()
        .ok_or("no PEM block")?
        .map_err(|e| format!("not PEM: {e}"))?;
    let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let unix = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(Described {
        serial: cert.raw_serial_as_string().replace(':', ""),
        subject: cert.subject().to_string(),
        not_before: unix(validity.not_before.timestamp()),
        not_after: unix(validity.not_after.timestamp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_certificate_is_said() {
        assert_eq!(describe("").err().as_deref(), Some("no PEM block"));
        let err = describe("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").err().unwrap();
        assert!(err.starts_with("not an X.509 certificate"), "{err}");
        let err = describe("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").err().unwrap();
        assert!(err.starts_with("not PEM"), "{err}");
    }
}
