//! A TCP proxy in front of a test server that can cut every connection it
//! carries at once: a dropped connection, as a client on a flaky network
//! sees it, while the server goes on. It can also lose the next responses
//! (their requests reach the server, the client never gets a byte back)
//! and move to another upstream (a load balancer picking another instance).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy on `127.0.0.1:0` to one upstream address.
pub struct CuttingProxy {
    /// `http://127.0.0.1:<port>` of the proxy.
    pub address: String,
    cuts: watch::Sender<u64>,
    upstream: Arc<Mutex<String>>,
    /// Connections still to lose the response of.
    lose: Arc<AtomicUsize>,
    /// Responses lost so far.
    lost: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// `host:port` of `url` (`http://host:port` or `host:port`).
fn authority(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

impl CuttingProxy {
    /// Starts a proxy to `upstream` (`http://host:port` or `host:port`).
    ///
    /// # Panics
    /// When it can't listen.
    pub async fn start(upstream: &str) -> CuttingProxy {
        let upstream = Arc::new(Mutex::new(authority(upstream)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let address = format!("http://{}", listener.local_addr().expect("its address"));
        let (cuts, _) = watch::channel(0_u64);
        let lose = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(carry(
            listener,
            cuts.clone(),
            Arc::clone(&upstream),
            Arc::clone(&lose),
            Arc::clone(&lost),
        ));
        CuttingProxy {
            address,
            cuts,
            upstream,
            lose,
            lost,
            task,
        }
    }

    /// The URL of `path` through the proxy.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Closes every connection open now; new ones are carried as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Carries new connections to `upstream` from now on.
    pub fn retarget(&self, upstream: &str) {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = authority(upstream);
    }

    /// The next `n` connections carry their requests to the server, then
    /// close as the response starts, before the client gets a byte of it.
    pub fn lose_responses(&self, n: usize) {
        self.lose.store(n, Ordering::SeqCst);
    }

    /// How many responses were lost so.
    #[must_use]
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

/// Accepts connections and carries each to the upstream of the moment.
async fn carry(
    listener: TcpListener,
    cuts: watch::Sender<u64>,
    upstream: Arc<Mutex<String>>,
    lose: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
) {
    while let Ok((mut down, _)) = listener.accept().await {
        let mut cut = cuts.subscribe();
        cut.borrow_and_update();
        let to = upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let losing = lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let lost = Arc::clone(&lost);
        tokio::spawn(async move {
            let Ok(mut up) = TcpStream::connect(&to).await else {
                return;
            };
            if losing {
                let (mut down_read, _down_write) = down.split();
                let (mut up_read, mut up_write) = up.split();
                let mut first = [0_u8; 1];
                // The request goes up; the response's first byte ends it
                // all, unsent.
                tokio::select! {
                    _ = tokio::io::copy(&mut down_read, &mut up_write) => {}
                    _ = up_read.read(&mut first) => {
                        lost.fetch_add(1, Ordering::SeqCst);
                    }
                    _ = cut.changed() => {}
                }
                return;
            }
            // Either side closing ends it; a cut drops both.
            tokio::select! {
                _ = copy_bidirectional(&mut down, &mut up) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
