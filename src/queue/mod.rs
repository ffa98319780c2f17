//! The durable queue: per-shard append-only logs of message and outcome records.

pub mod index;
pub mod log;
pub mod record;
pub mod recovery;

use glommio::io::{BufferedFile, OpenOptions};
use std::io;
use std::path::Path;

/// Opens a segment for reading message content back (delivery, DSNs), without access-time
/// updates: under relatime every read after a commit would change the inode's atime, and
/// on ext4 without a journal each `fdatasync` then writes the dirty inode block too, one
/// more synchronous disk write per commit. O_NOATIME is only for the file's owner (or
/// CAP_FOWNER); a segment owned by someone else is opened without it.
pub async fn open_segment_for_reading(path: &Path) -> io::Result<BufferedFile> {
    let noatime = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .buffered_open(path)
        .await
        .map_err(io::Error::from);
    match noatime {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            BufferedFile::open(path).await.map_err(io::Error::from)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn atime(path: &Path) -> (i64, i64) {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: stat(2) into a zeroed struct we own, with a NUL-terminated path.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::stat(c.as_ptr(), &mut st) }, 0);
        (st.st_atime, st.st_atime_nsec)
    }

    #[test]
    fn reading_a_segment_leaves_its_access_time_alone() {
        let dir = std::env::temp_dir().join(format!("ringpost-noatime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("segment");
        std::fs::write(&path, b"record bytes").expect("write");
        // An access time older than the modification time: relatime would update it on
        // the next read (and so would strictatime; noatime mounts never do).
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
        let times = [
            libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        // SAFETY: utimensat(2) with a NUL-terminated path and two timespecs we own.
        let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
        assert_eq!(r, 0);
        let before = atime(&path);
        let read_path = path.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let f = open_segment_for_reading(&read_path).await.expect("open");
                let bytes = f.read_at(0, 6).await.expect("read");
                assert_eq!(&bytes[..], b"record");
                let _ = f.close().await;
            })
            .expect("executor")
            .join()
            .expect("join");
        assert_eq!(atime(&path), before, "the read changed the access time");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
