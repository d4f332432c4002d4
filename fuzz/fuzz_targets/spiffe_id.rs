//! SPIFFE IDs (`trellis_identity::spiffe::SpiffeId`), read from peers' certificates, CSRs,
//! DestinationRule subjectAltNames and AuthorizationPolicy principals.
//!
//! Properties: nothing panics; an id that parses prints back to exactly the text it was read
//! from and parses again to the same id; `SpiffeId::new` agrees with `parse` on the parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_identity::spiffe::{SpiffeId, normalize_trust_domain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(text) {
        let printed = id.to_string();
        assert_eq!(printed, text);
        assert_eq!(SpiffeId::parse(&printed), Ok(id.clone()));
        assert_eq!(SpiffeId::new(&id.trust_domain, &id.namespace, &id.service_account), Ok(id));
    }
    // The parts of a three-field line, as a CA would put them together from a caller.
    let mut parts = text.splitn(3, '\n');
    if let (Some(domain), Some(namespace), Some(account)) = (parts.next(), parts.next(), parts.next()) {
        let domain = normalize_trust_domain(domain);
        if let Ok(id) = SpiffeId::new(&domain, namespace, account) {
            assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
        }
    }
});
