//! The proxy's configuration model: protobuf messages (prost) with the proto3 JSON mapping
//! (pbjson), compiled from `proto/` at build time without a system `protoc`; and the delta xDS
//! envelope (Envoy's discovery messages and ADS service) that carries them.

/// `trellis.config.v1`: services, virtual hosts and routes, clusters, endpoints.
pub mod config {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/trellis.config.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/trellis.config.v1.serde.rs"));
}

/// Envoy's packages, nested as prost expects, holding only the discovery envelope, the
/// external authorization service and the rate-limit service.
pub mod envoy {
    pub mod service {
        pub mod auth {
            /// `envoy.service.auth.v3.Authorization/Check` (client and server): CUSTOM policies'
            /// gRPC providers.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
            }
        }
        pub mod ratelimit {
            /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (client and
            /// server): the global rate limit.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
            }
        }
        pub mod discovery {
            /// The delta discovery messages and the ADS service (client and server).
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                /// The descriptors a rate-limit request carries.
                pub mod v3 {
                    #![allow(clippy::all, missing_docs)]
                    include!(concat!(env!("OUT_DIR"), "/envoy.extensions.common.ratelimit.v3.rs"));
                }
            }
        }
    }
    pub mod r#type {
        /// The HTTP status of an external authorization denial.
        pub mod v3 {
            #![allow(clippy::all, missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
    pub mod config {
        pub mod core {
            /// The node a proxy introduces itself with; addresses and headers of external
            /// authorization.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

/// `google.rpc`: the status a NACK and an external authorization answer carry.
pub mod google {
    pub mod rpc {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

/// OpenTelemetry's OTLP trace messages and `TraceService/Export` (client and server), for the
/// proxy's span exporter.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.common.v1.rs"));
            }
        }
        pub mod resource {
            pub mod v1 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.resource.v1.rs"));
            }
        }
        pub mod trace {
            pub mod v1 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
            }
        }
        pub mod collector {
            pub mod trace {
                pub mod v1 {
                    #![allow(clippy::all, missing_docs)]
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.collector.trace.v1.rs"));
                }
            }
        }
    }
}

pub use envoy::service::discovery::v3 as discovery;

pub mod codec;
pub mod types;
pub mod uri;
