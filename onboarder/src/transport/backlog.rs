//! How far behind the QUIC listener's reader is: the bytes waiting in its socket's receive
//! queue, as the kernel counts them against the receive buffer (`SO_MEMINFO`, Linux).
//!
//! Why: one task reads the listener's socket for every connection. When bulk work (firmware
//! chunks over QUIC and HTTPS) keeps two cores busy, that task falls behind, the queue fills
//! and the kernel drops datagrams; a dropped keep-alive or handshake costs a session, and a
//! fleet's sessions then expire together (BENCHMARKS.md, the tenth 100,000-device run). A
//! delayed chunk costs nothing, so firmware chunks wait while the queue is over a mark
//! ([`crate::transport::limits::ChunkTurns`]). Where the kernel does not tell, the listener is
//! never taken to be behind: the chunk turns alone bound the bulk work.
//!
//! One system call on this socket per look. (The first version read the kernel's table of
//! every UDP socket on the host, `/proc/self/net/udp`: with 1,000 CoAP devices simulated on
//! the same host that was 70 % of an idle server's CPU, and it grows with the host's sockets.)

use std::io;
use std::net::UdpSocket;
use std::time::Duration;

use tokio::sync::watch;

/// How often the queue is looked at.
const PERIOD: Duration = Duration::from_millis(50);

/// The receive queue of one UDP socket.
#[derive(Debug)]
pub struct SocketBacklog {
    /// The listener's socket (a second descriptor of it, only looked at).
    socket: UdpSocket,
    capacity: usize,
}

impl SocketBacklog {
    /// The backlog of `socket` (bound).
    pub fn of(socket: &UdpSocket) -> io::Result<SocketBacklog> {
        let capacity = socket2::SockRef::from(socket).recv_buffer_size()?;
        let backlog = SocketBacklog {
            socket: socket.try_clone()?,
            capacity,
        };
        backlog.queued()?;
        Ok(backlog)
    }

    /// Bytes queued now (as the kernel counts them against the receive buffer).
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    #[allow(unsafe_code)]
    pub fn queued(&self) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SO_MEMINFO on these architectures (asm-generic/socket.h); the libc crate names only
        // the offsets into its answer.
        const SO_MEMINFO: libc::c_int = 55;
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the descriptor stays open while `self` lives; the kernel writes at most
        // `len` bytes into `info` and sets `len` to what it wrote.
        let r = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info[libc::SK_MEMINFO_RMEM_ALLOC as usize] as usize)
    }

    /// Bytes queued now: not told by this system.
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    pub fn queued(&self) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the receive queue is not told by this system",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
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
