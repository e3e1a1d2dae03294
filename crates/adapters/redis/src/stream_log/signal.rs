//! Stops and wants, delivered without polling: a stop request sets the
//! generation's stop flag and publishes `{conversation} {generation}` on the
//! log's stop channel in the same script; a reader on an instance that does
//! not run the generation sets its `want` flag and publishes the same on
//! the want channel (see `stream_log.rs`, "Appends"). Every instance
//! listens on both channels with one pub/sub connection (one task per
//! [`RedisStreamLog`](super::RedisStreamLog)), and the instance running
//! that generation resolves its [`StopSignal`], or starts handing its
//! events to Redis.
//!
//! A publish is lost when the listener is not connected at that moment
//! (Redis restarted, the connection dropped), and a want is lost when it
//! comes before the instance has noted the generation it just opened: the
//! lease renewal, which reads both flags on every renewal, catches such a
//! stop or want one renewal interval later at most (see `renewal.rs`).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::ConversationId;
use confab_ports::StopSignal;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::Inner;

/// How long the listener waits before it connects again after a failure.
const RETRY: Duration = Duration::from_millis(250);

/// Resolves when a stop is asked of the generation it was opened with.
pub(super) struct RedisStopSignal {
    rx: watch::Receiver<bool>,
}

impl RedisStopSignal {
    pub(super) fn new(rx: watch::Receiver<bool>) -> Self {
        Self { rx }
    }
}

#[async_trait]
impl StopSignal for RedisStopSignal {
    async fn stopped(&mut self) {
        // An error means the generation is over here without a stop: none
        // can come any more.
        if self.rx.wait_for(|stopped| *stopped).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The stop listener of one stream log: started by the first `open`.
#[derive(Debug, Default)]
pub(super) struct Listener {
    /// Whether the listener is subscribed now.
    subscribed: OnceLock<watch::Receiver<bool>>,
}

impl Listener {
    /// Starts the listener if it isn't running and, when it starts it,
    /// waits (at most `wait`) until it listens, so a stop asked right after
    /// the first `open` is heard.
    pub(super) async fn ensure(&self, inner: &Arc<Inner>, wait: Duration) {
        let mut started = false;
        let mut subscribed = self
            .subscribed
            .get_or_init(|| {
                started = true;
                let (tx, rx) = watch::channel(false);
                inner.pool.spawn(listen(Arc::downgrade(inner), tx));
                rx
            })
            .clone();
        // Only the first open waits: later ones never pay for a listener
        // that can't connect (Redis down, or pub/sub refused), which only
        // delays a stop to the next renewal.
        if started {
            let _ = tokio::time::timeout(wait, subscribed.wait_for(|on| *on)).await;
        }
    }
}

/// The channel stops are published on.
pub(super) fn channel(inner: &Inner) -> String {
    inner.pool.key("log:stop")
}

/// The channel wants are published on.
pub(super) fn want_channel(inner: &Inner) -> String {
    inner.pool.key("log:want")
}

/// A stop message's conversation and generation.
pub(super) fn parse(message: &str) -> Option<(ConversationId, &str)> {
    let (conversation, generation) = message.split_once(' ')?;
    Some((conversation.parse().ok()?, generation))
}

/// The listener task: subscribes, hands each stop or want to the
/// generation it names, and connects again after a failure, until the log
/// is dropped.
async fn listen(inner: Weak<Inner>, subscribed: watch::Sender<bool>) {
    let mut failing = false;
    // Wants refused (a Redis ACL without the channel): said once.
    let mut wants_refused = false;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (channel, wants) = (channel(&strong), want_channel(&strong));
        let mut gone = strong.gone.subscribe();
        let connected = strong.pool.pubsub().await;
        drop(strong);
        match connected {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("listening for stops again");
                    }
                    failing = false;
                    // On its own: a want channel refused leaves stops heard
                    // (wants are then read at each renewal).
                    if let Err(error) = pubsub.subscribe(&wants).await
                        && !std::mem::replace(&mut wants_refused, true)
                    {
                        tracing::warn!(
                            %error,
                            "cannot listen for wants: readers on other instances wait for \
                             the next lease renewal of the answer they follow"
                        );
                    }
                    subscribed.send_replace(true);
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            // The log is gone: so is its listener.
                            _ = gone.changed() => return,
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Some(strong) = inner.upgrade() else { return };
                                if let Ok(text) = message.get_payload::<String>()
                                    && let Some((conversation, generation)) = parse(&text)
                                {
                                    if message.get_channel_name() == wants {
                                        strong.share(conversation, generation);
                                    } else {
                                        strong.deliver_stop(conversation, generation);
                                    }
                                }
                            }
                        }
                    }
                    subscribed.send_replace(false);
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot listen for stops; retrying");
                    }
                    failing = true;
                }
            },
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot listen for stops; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = gone.changed() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_message_names_a_conversation_and_a_generation() {
        let id = ConversationId::generate();
        let text = format!("{id} 1717171717171");
        assert_eq!(parse(&text), Some((id, "1717171717171")));
        assert_eq!(parse("not-a-uuid 1"), None);
        assert_eq!(parse("nothing"), None);
    }
}
