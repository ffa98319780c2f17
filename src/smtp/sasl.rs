//! SMTP AUTH (RFC 4954) mechanisms PLAIN (RFC 4616) and LOGIN, without I/O: decoding what
//! the client sends. Verifying the password is the caller's job (it is slow on purpose).

use base64::Engine as _;

/// Credentials a client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Why a SASL response was refused; each is one reply.
pub const BAD_BASE64: &str = "501 5.5.2 Error: cannot decode the response (base64)";
pub const BAD_PLAIN: &str = "501 5.5.2 Error: malformed PLAIN response";
pub const ABORTED: &str = "501 5.7.0 Error: authentication aborted";

fn decode(b64: &[u8]) -> Result<Vec<u8>, &'static str> {
    if b64 == b"=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| BAD_BASE64)
}

/// A client's "*" cancels the exchange (RFC 4954 4).
pub fn is_cancel(line: &[u8]) -> bool {
    line == b"*"
}

/// PLAIN: base64 of `authzid NUL authcid NUL passwd`. An authzid other than the authcid
/// is refused (no proxy authorization).
pub fn plain(b64: &[u8]) -> Result<Credentials, &'static str> {
    let raw = decode(b64)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_PLAIN);
    };
    if !authz.is_empty() && authz != user {
        return Err(BAD_PLAIN);
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| BAD_PLAIN);
    let (user, password) = (text(user)?, text(pass)?);
    if user.is_empty() {
        return Err(BAD_PLAIN);
    }
    Ok(Credentials { user, password })
}

/// LOGIN: one base64 line for the user name, one for the password.
pub fn login_part(b64: &[u8]) -> Result<String, &'static str> {
    String::from_utf8(decode(b64)?).map_err(|_| BAD_BASE64)
}

/// "334 " challenges of LOGIN: base64 of "Username:" and "Password:".
pub const LOGIN_USER: &str = "334 VXNlcm5hbWU6";
pub const LOGIN_PASSWORD: &str = "334 UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    fn plain_forms() {
        assert_eq!(
            plain(&b64(b"\0alice\0secret")),
            Ok(Credentials {
                user: "alice".into(),
                password: "secret".into()
            })
        );
        assert_eq!(
            plain(&b64(b"alice\0alice\0secret")).map(|c| c.user),
            Ok("alice".into())
        );
        assert_eq!(plain(&b64(b"bob\0alice\0secret")), Err(BAD_PLAIN));
        assert_eq!(plain(&b64(b"\0alice")), Err(BAD_PLAIN));
        assert_eq!(plain(&b64(b"\0\0secret")), Err(BAD_PLAIN));
        assert_eq!(plain(b"***"), Err(BAD_BASE64));
        assert_eq!(login_part(&b64(b"alice")), Ok("alice".into()));
        assert!(is_cancel(b"*"));
    }
}
