//! Opaque TCP: bytes both ways, half-close passed on (one side's FIN shuts the other's write
//! side), and an idle timeout that closes connections nobody uses.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Default idle timeout of proxied TCP connections (Envoy's and Istio's: one hour).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Copies both ways until both sides are done, one fails, or nothing moves for `idle`. Returns
/// the bytes sent downstream→upstream and upstream→downstream, however it ended (counted for the
/// metrics either way), and the error that ended it, if any.
pub async fn relay<A, B>(
    downstream: &mut A,
    upstream: &mut B,
    idle: Duration,
) -> (u64, u64, Option<io::Error>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_for(downstream, upstream, idle, None).await
}

/// `relay`, ended also when the connection has lasted `lifetime` (a cluster's
/// maxConnectionDuration), however busy it is.
pub async fn relay_for<A, B>(
    downstream: &mut A,
    upstream: &mut B,
    idle: Duration,
    lifetime: Option<Duration>,
) -> (u64, u64, Option<io::Error>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_read, mut down_write) = tokio::io::split(downstream);
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let (sent, received) = (Counter::default(), Counter::default());
    let progress = tokio::sync::Notify::new();
    let forward = copy_then_shutdown(&mut down_read, &mut up_write, &sent, &progress);
    let backward = copy_then_shutdown(&mut up_read, &mut down_write, &received, &progress);
    let both = async { tokio::try_join!(forward, backward) };
    tokio::pin!(both);
    let end_of_life = async {
        match lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end_of_life);
    let ended = loop {
        tokio::select! {
            result = &mut both => break result.err(),
            _ = progress.notified() => {}
            _ = tokio::time::sleep(idle) => {
                break Some(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}")));
            }
            _ = &mut end_of_life => {
                break Some(io::Error::new(io::ErrorKind::TimedOut, "maxConnectionDuration reached"));
            }
        }
    };
    (sent.get(), received.get(), ended)
}

#[derive(Default)]
struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn copy_then_shutdown<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &Counter,
    progress: &tokio::sync::Notify,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // Pass the half-close on; the other direction may still be talking.
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        counter.add(n);
        progress.notify_one();
    }
}
