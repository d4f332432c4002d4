//! Security on the connection: mutual TLS with the mesh certificate on both sides
//! (`upstream` dials it, `inbound` decides per PeerAuthentication whether to terminate, pass
//! through or refuse), the stream type that is either plaintext or TLS (`stream`), and what the
//! app learns of its peer (`xfcc`), and who may call the app (`authz`, applied by `policy`).

pub mod authz;
pub mod ext_authz;
pub mod inbound;
pub mod jwt;
pub mod policy;
pub mod stream;
pub mod upstream;
pub mod xfcc;
