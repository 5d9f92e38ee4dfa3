//! How far behind the QUIC listener's reader is: the bytes waiting in its socket's receive
//! queue, as the kernel's table of UDP sockets shows them (`/proc/self/net/udp`, Linux).
//!
//! Why: one task reads the listener's socket for every connection. When bulk work (firmware
//! chunks over QUIC and HTTPS) keeps two cores busy, that task falls behind, the queue fills
//! and the kernel drops datagrams; a dropped keep-alive or handshake costs a session, and a
//! fleet's sessions then expire together (BENCHMARKS.md, the tenth 100,000-device run). A
//! delayed chunk costs nothing, so firmware chunks wait while the queue is over a mark
//! ([`crate::transport::limits::ChunkTurns`]). Where the table cannot be read the listener is
//! never taken to be behind: the chunk turns alone bound the bulk work, as before.

use std::io;
use std::net::UdpSocket;
use std::time::Duration;

use tokio::sync::watch;

/// How often the queue is looked at.
const PERIOD: Duration = Duration::from_millis(50);

/// The kernel's tables of UDP sockets in this process's network namespace.
const TABLES: [&str; 2] = ["/proc/self/net/udp", "/proc/self/net/udp6"];

/// The receive queue of one UDP socket.
#[derive(Debug)]
pub struct SocketBacklog {
    inode: u64,
    capacity: usize,
}

impl SocketBacklog {
    /// The backlog of `socket` (bound; it is only looked at).
    pub fn of(socket: &UdpSocket) -> io::Result<SocketBacklog> {
        let inode = rustix::fs::fstat(socket)?.st_ino;
        let capacity = socket2::SockRef::from(socket).recv_buffer_size()?;
        Ok(SocketBacklog { inode, capacity })
    }

    /// Bytes queued now (as the kernel counts them against the receive buffer).
    pub fn queued(&self) -> io::Result<usize> {
        for table in TABLES {
            let text = match std::fs::read_to_string(table) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(queued) = queued_in(&text, self.inode) {
                return Ok(queued);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the socket is not in the kernel's UDP tables",
        ))
    }

    /// Whether the reader is behind, looked at every [`PERIOD`] until `stopped`: from half
    /// the receive buffer queued until it is under an eighth again (apart, so that it does not
    /// flap at one mark).
    pub fn watch(self, mut stopped: watch::Receiver<bool>) -> watch::Receiver<bool> {
        let (behind, rx) = watch::channel(false);
        let (high, low) = (self.capacity / 2, self.capacity / 8);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(PERIOD);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stopped.changed() => return,
                }
                let queued = match self.queued() {
                    Ok(queued) => queued,
                    Err(e) => {
                        tracing::debug!("the QUIC listener's backlog cannot be read: {e}");
                        let _ = behind.send(false);
                        return;
                    }
                };
                let was = *behind.borrow();
                let now = if was { queued > low } else { queued > high };
                if now != was {
                    tracing::debug!(queued, "QUIC listener behind: {now}");
                    let _ = behind.send(now);
                }
            }
        });
        rx
    }
}

/// The receive queue of the socket `inode` in a kernel UDP table (`sl local remote st
/// tx_queue:rx_queue tr:when retrnsmt uid timeout inode ...`, queues in hex).
fn queued_in(table: &str, inode: u64) -> Option<usize> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        usize::from_str_radix(rx, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_the_table_gives_its_sockets_receive_queue() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:809D 00000000:0000 07 00000000:005F9335 00:00000000 00000000     0        0 734971 2 0000000000000000 3767111\n\
            2: 0100007F:809E 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 734972 2 0000000000000000 0\n";
        assert_eq!(queued_in(table, 734971), Some(0x5F9335));
        assert_eq!(queued_in(table, 734972), Some(0));
        assert_eq!(queued_in(table, 1), None);
        assert_eq!(queued_in("garbage\n1: x", 1), None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn datagrams_left_unread_show_in_the_backlog_and_mark_the_reader_behind() {
        let socket = crate::transport::quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let backlog = SocketBacklog::of(&socket).unwrap();
        assert_eq!(backlog.queued().unwrap(), 0);
        let capacity = backlog.capacity;
        let (_stop, stopped) = watch::channel(false);
        let mut behind = backlog.watch(stopped);
        assert!(!*behind.borrow());
        // Fill the queue past half of the buffer, reading nothing.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = vec![0u8; 8192];
        let target = socket.local_addr().unwrap();
        let mut sent = 0;
        while sent < capacity {
            sender.send_to(&datagram, target).unwrap();
            sent += datagram.len();
        }
        tokio::time::timeout(Duration::from_secs(5), behind.wait_for(|b| *b))
            .await
            .unwrap()
            .unwrap();
        // Read it all: the reader has caught up.
        socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 65536];
        while socket.recv(&mut buf).is_ok() {}
        tokio::time::timeout(Duration::from_secs(5), behind.wait_for(|b| !*b))
            .await
            .unwrap()
            .unwrap();
    }
}
