//! A WebSocket connection gives back the memory a large frame made its
//! buffers grow to (tungstenite is patched for this: vendor/README.md).
//! Without it every Socket.IO connection keeps a write buffer as large as the
//! largest frame it was ever sent, `presenceBulk` included, for its whole
//! life.
//!
//! The heap is measured with dhat's statistics, which count every allocation
//! of this process: this file holds one test and nothing runs beside it.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The read buffer Parley gives each socket (`PARLEY_SOCKET_READ_BUFFER_BYTES`).
const READ_BUFFER: usize = 1024;
/// Far larger than any buffer an idle connection should keep.
const LARGE: usize = 256 * 1024;

fn heap_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

/// Sends `text` from `from` and reads it at `to`; the message is dropped.
async fn pass<S>(from: &mut WebSocketStream<S>, to: &mut WebSocketStream<S>, text: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let len = text.len();
    let (sent, received) = tokio::join!(from.send(Message::text(text)), to.next());
    sent.expect("send");
    let received = received.expect("stream open").expect("a frame");
    assert_eq!(received.len(), len);
}

#[tokio::test]
async fn a_connection_gives_back_what_a_large_frame_made_its_buffers_grow_to() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // Loopback TCP: its buffers are the kernel's, not this process's heap.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client_io, accepted) = tokio::join!(
        tokio::net::TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    let (client_io, (server_io, _)) = (client_io.unwrap(), accepted.unwrap());
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let mut server = WebSocketStream::from_raw_socket(server_io, Role::Server, Some(config)).await;
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, Some(config)).await;

    // Small frames both ways: every buffer exists at its idle size.
    pass(&mut server, &mut client, "2".to_owned()).await;
    pass(&mut client, &mut server, "3".to_owned()).await;
    let idle = heap_bytes();

    // One large frame each way, then small ones again.
    pass(&mut server, &mut client, "x".repeat(LARGE)).await;
    pass(&mut client, &mut server, "y".repeat(LARGE)).await;
    pass(&mut server, &mut client, "2".to_owned()).await;
    pass(&mut client, &mut server, "3".to_owned()).await;
    let after = heap_bytes();

    // Both ends read and wrote LARGE bytes: an unpatched tungstenite keeps
    // about 4 × LARGE here (each side's write and read buffer).
    assert!(
        after <= idle + 2 * READ_BUFFER,
        "the connection kept {} bytes more than when idle (idle: {idle} bytes)",
        after.saturating_sub(idle)
    );
}
