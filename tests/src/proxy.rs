//! A TCP proxy in front of a test server that can cut every connection it
//! carries at once: a dropped connection, as a client on a flaky network
//! sees it, while the server goes on.

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy on `127.0.0.1:0` to one upstream address.
pub struct CuttingProxy {
    /// `http://127.0.0.1:<port>` of the proxy.
    pub address: String,
    cuts: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl CuttingProxy {
    /// Starts a proxy to `upstream` (`http://host:port` or `host:port`).
    ///
    /// # Panics
    /// When it can't listen.
    pub async fn start(upstream: &str) -> CuttingProxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the proxy");
        let address = format!("http://{}", listener.local_addr().expect("its address"));
        let (cuts, _) = watch::channel(0_u64);
        let cut_signal = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut cut = cut_signal.subscribe();
                cut.borrow_and_update();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Either side closing ends it; a cut drops both.
                    tokio::select! {
                        _ = copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        CuttingProxy {
            address,
            cuts,
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
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
