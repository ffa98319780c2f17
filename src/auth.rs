//! SMTP AUTH users: the users file (`user:$argon2id$...` lines, salted argon2 hashes,
//! never plain text), the `ringpost user` commands, and the per-shard checker with its
//! failure limit per client IP.

use crate::smtp::sasl::Credentials;
use crate::smtp::session::AuthResult;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::OsRng;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client IPs remembered for the failure limit, per shard; past this the table is cleared.
const FAILURE_TABLE_MAX: usize = 65_536;

/// A user name is a dot-atom or an address: no ':' (the file's separator) or spaces.
pub fn valid_user(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Reads a users file into user -> PHC hash string.
pub fn load(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut users = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{}:{}: expected user:hash", path.display(), n + 1))?;
        PasswordHash::new(hash)
            .map_err(|e| format!("{}:{}: bad hash: {e}", path.display(), n + 1))?;
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

/// Writes the users file atomically, readable by its owner only.
pub fn save(path: &Path, users: &BTreeMap<String, String>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    for (u, h) in users {
        writeln!(f, "{u}:{h}").map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The per-shard checker.
pub struct Authenticator {
    users: Arc<BTreeMap<String, String>>,
    /// Verified against for unknown users, so that "no such user" takes as long as a
    /// wrong password.
    decoy: Arc<String>,
    failures: RefCell<HashMap<IpAddr, (u32, Instant)>>,
    failures_max: u32,
    window: Duration,
}

impl Authenticator {
    pub fn new(
        users: Arc<BTreeMap<String, String>>,
        decoy: Arc<String>,
        failures_max: u32,
        window: Duration,
    ) -> Authenticator {
        Authenticator {
            users,
            decoy,
            failures: RefCell::new(HashMap::new()),
            failures_max,
            window,
        }
    }

    fn locked(&self, ip: IpAddr) -> bool {
        let f = self.failures.borrow();
        f.get(&ip)
            .is_some_and(|(n, since)| *n >= self.failures_max && since.elapsed() < self.window)
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.borrow_mut();
        if f.len() >= FAILURE_TABLE_MAX {
            f.clear();
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub async fn check(&self, ip: IpAddr, creds: &Credentials) -> AuthResult {
        if self.locked(ip) {
            return AuthResult::Locked;
        }
        let known = self.users.get(&creds.user).cloned();
        let hash = known.clone().unwrap_or_else(|| self.decoy.as_ref().clone());
        let password = creds.password.clone();
        let ok = glommio::executor()
            .spawn_blocking(move || {
                PasswordHash::new(&hash).is_ok_and(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
            })
            .await;
        if ok && known.is_some() {
            self.failures.borrow_mut().remove(&ip);
            AuthResult::Ok
        } else {
            self.failed(ip);
            AuthResult::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("ringpost-users-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        let mut users = load(&path).unwrap();
        assert!(users.is_empty());
        let h = hash_password("secret").unwrap();
        assert!(h.starts_with("$argon2id$") && !h.contains("secret"));
        users.insert("alice".into(), h.clone());
        save(&path, &users).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.get("alice"), Some(&h));
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default()
            .verify_password(b"secret", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
        std::fs::write(&path, "bob\n").unwrap();
        assert!(load(&path).is_err());
        assert!(valid_user("a@b.test") && !valid_user("a:b") && !valid_user(""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
