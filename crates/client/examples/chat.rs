//! Logs in, sends one message and prints the answer as it builds up.
//!
//! ```sh
//! CONFAB_PASSWORD='correct horse battery staple' \
//!   cargo run -p confab-client --example chat -- http://127.0.0.1:8080 alice "Explain Redis caching"
//! ```

use std::io::Write;

use confab_client::{Client, Event, Send};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(username), Some(text)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: chat <url> <username> <message> (password in CONFAB_PASSWORD)".into());
    };
    let password = std::env::var("CONFAB_PASSWORD").map_err(|_| "set CONFAB_PASSWORD")?;

    let client = Client::new(&url)?;
    client.login(&username, &password).await?;
    let mut answer = client.send(&Send::new_conversation(text)).await?;
    let mut out = std::io::stdout().lock();
    while let Some(event) = answer.next().await {
        match event? {
            Event::Text(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Ended(status) => writeln!(out, "\n[{status:?}]")?,
            Event::Failed { message, .. } => writeln!(out, "\n[failed: {message}]")?,
            Event::Reconnected => writeln!(out, "\n[reconnected]")?,
            _ => {}
        }
    }
    if let Some(id) = answer.conversation_id() {
        writeln!(
            out,
            "conversation {id}: {}",
            answer.title().unwrap_or("(untitled)")
        )?;
    }
    Ok(())
}
