//! The gRPC codec of the discovery stream: prost's, with small per-stream buffers.
//!
//! tonic keeps one encode and one decode buffer per stream for the stream's whole life, grown
//! to the largest message it has carried. A control plane holds one stream per proxy, so the
//! default 8 KiB start and 32 KiB batching would cost more than everything else a proxy's
//! stream needs. trellisd uses only the decoder (it encodes each response into a buffer of its
//! own, `control-plane/src/xds/grpc.rs`); the encoder settings, each message handed to HTTP/2
//! on its own, matter to the clients: the proxy and the load generator.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's buffers: a request or an ACK fits.
const BUFFER_SIZE: usize = 1024;
/// Yield each encoded message at once rather than batching several into one buffer.
const YIELD_THRESHOLD: usize = 1;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; the ADS client and server are generated with it.
#[derive(Debug, Clone, Copy)]
pub struct XdsCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for XdsCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for XdsCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
