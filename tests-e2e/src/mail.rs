//! The suite's SMTP sink: `parley_common::testing_smtp::SmtpServer` bound at
//! `E2E_SMTP_LISTEN`, the address the platform under test sends its email to.
//!
//! One sink per test process, on a runtime thread of its own, so that every test
//! of the process (each with its own tokio runtime) shares it. Test binaries run
//! one after the other (`cargo test`), so each binds the address in turn; an
//! email the platform tried to send while no sink was listening is retried by its
//! mailer (with backoff) and lands in whichever sink listens next. Tests
//! therefore only look at mail addressed to their own users.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use parley_common::testing_smtp::{ReceivedMail, SmtpServer};

use crate::settings;

/// The sink, or `None` (with a note printed) when `E2E_SMTP_LISTEN` is unset.
pub fn sink() -> Option<&'static SmtpServer> {
    static SINK: OnceLock<Option<SmtpServer>> = OnceLock::new();
    SINK.get_or_init(|| {
        let listen = settings().smtp_listen.clone()?;
        let addr: SocketAddr = listen
            .parse()
            .unwrap_or_else(|err| panic!("E2E_SMTP_LISTEN={listen:?} is not an address: {err}"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("e2e-smtp-sink".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("SMTP sink runtime");
                runtime.block_on(async move {
                    // The previous test binary may still be closing it: retry a while.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    let server = loop {
                        match SmtpServer::start_on(addr).await {
                            Ok(server) => break server,
                            Err(err) if tokio::time::Instant::now() < deadline => {
                                let _ = err;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(err) => panic!("SMTP sink cannot bind {addr}: {err}"),
                        }
                    };
                    tx.send(server).expect("hand the sink over");
                    // Serve for as long as the test process lives.
                    std::future::pending::<()>().await;
                });
            })
            .expect("SMTP sink thread");
        Some(rx.recv().expect("SMTP sink started"))
    })
    .as_ref()
}

/// Prints why an email assertion is skipped; returns the sink if there is one.
pub fn sink_or_note(test: &str) -> Option<&'static SmtpServer> {
    let sink = sink();
    if sink.is_none() {
        println!("note: E2E_SMTP_LISTEN is not set: {test} skips its email assertions");
    }
    sink
}

/// The mail received so far for `address`.
pub fn mail_to(sink: &SmtpServer, address: &str) -> Vec<ReceivedMail> {
    sink.received()
        .into_iter()
        .filter(|mail| mail.to.iter().any(|to| to.eq_ignore_ascii_case(address)))
        .collect()
}

/// Waits until `address` received at least `count` mails accepted by `keep`
/// (for at most [`crate::EVENTUALLY`]), then returns them.
pub async fn wait_for_mail(
    sink: &SmtpServer,
    address: &str,
    count: usize,
    keep: impl Fn(&ReceivedMail) -> bool,
) -> Vec<ReceivedMail> {
    let deadline = tokio::time::Instant::now() + crate::EVENTUALLY;
    loop {
        let mails: Vec<_> = mail_to(sink, address).into_iter().filter(&keep).collect();
        if mails.len() >= count || tokio::time::Instant::now() >= deadline {
            return mails;
        }
        // Wakes on every stored mail, or after a second.
        let stored = sink.received().len();
        let _ = sink.wait_for(stored + 1, Duration::from_secs(1)).await;
    }
}
