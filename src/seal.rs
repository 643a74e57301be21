//! Encryption at rest for state kept in a shared store: AES-256-GCM (ring, already in the tree
//! for TLS) with the key from `STATE_KEY_FILE`.
//!
//! Redis is shared infrastructure: its operators, its backups and anyone who reaches its port
//! would otherwise read the fleet's refresh token. An entry is `msc1.<key id>.<base64 of nonce
//! and ciphertext>`; the key id (a hash of the key, not the key) tells "written with another key"
//! apart from "damaged or tampered with", and the entry's own Redis key is the associated data,
//! so an entry copied under another configuration's name does not decrypt.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "msc1";

/// Why a sealed entry cannot be opened, or a key cannot be used. Never includes key material or
/// plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error(
        "STATE_KEY_FILE must hold a 256-bit key: 64 hexadecimal characters, 44 characters of base64, or 32 raw bytes (generate one with `openssl rand -hex 32`)"
    )]
    BadKey,
    #[error(
        "the stored entry was written with another key (key id {found}, STATE_KEY_FILE has key id {ours}); every sidecar sharing the store needs the same STATE_KEY_FILE"
    )]
    WrongKey { found: String, ours: String },
    #[error(
        "the stored entry is damaged or was altered (it does not authenticate with STATE_KEY_FILE)"
    )]
    Tampered,
    #[error("the stored entry is not in the encrypted format of this version")]
    Format,
    #[error("no random numbers for a nonce")]
    Random,
}

/// The key, ready to seal and open. Deliberately not `Debug` beyond its key id.
pub struct Sealer {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.id).finish()
    }
}

impl Sealer {
    /// The key from the content of `STATE_KEY_FILE`: 32 raw bytes, or hex or base64 text
    /// (surrounding whitespace ignored).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        Self::from_bytes(&decode_key(bytes)?)
    }

    fn from_bytes(raw: &[u8; 32]) -> Result<Self, SealError> {
        let key = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| SealError::BadKey)?;
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"mcp-sidecar state key id\n".as_slice(), raw].concat(),
        );
        let id = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            key: LessSafeKey::new(key),
            id,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plain`, bound to `name` (the entry's key in the store).
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}.{}.{}", self.id, STANDARD.encode(out)))
    }

    /// Decrypts what [`Sealer::seal`] made for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let text = std::str::from_utf8(sealed).map_err(|_| SealError::Format)?;
        let mut parts = text.splitn(3, '.');
        let (Some(PREFIX), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Format);
        };
        if id != self.id {
            return Err(SealError::WrongKey {
                found: id
                    .chars()
                    .filter(char::is_ascii_hexdigit)
                    .take(12)
                    .collect(),
                ours: self.id.clone(),
            });
        }
        let raw = STANDARD.decode(body).map_err(|_| SealError::Format)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Format);
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Format)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .map_err(|_| SealError::Tampered)?;
        Ok(plain.to_vec())
    }
}

fn decode_key(bytes: &[u8]) -> Result<[u8; 32], SealError> {
    // Exactly 32 bytes is the raw key: no hex or base64 form of a 256-bit key is that long.
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| SealError::BadKey)?
        .trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SealError::BadKey)?
    } else {
        STANDARD.decode(text).map_err(|_| SealError::BadKey)?
    };
    decoded.try_into().map_err(|_| SealError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Sealer {
        Sealer::from_file_bytes(format!("{byte:02x}").repeat(32).as_bytes()).expect("a key")
    }

    #[test]
    fn an_entry_round_trips_and_holds_no_plaintext() {
        let canary = format!("{}+/=&{}", "rt-canary-seal".repeat(14), "z".repeat(20));
        let sealer = key(7);
        let sealed = sealer.seal("name", canary.as_bytes()).expect("sealed");
        assert!(!sealed.contains("rt-canary"), "{sealed}");
        assert!(sealed.starts_with("msc1."));
        assert_eq!(
            sealer.open("name", sealed.as_bytes()).expect("opened"),
            canary.as_bytes()
        );
        // A nonce per write: the same plaintext never seals the same way twice.
        assert_ne!(sealed, sealer.seal("name", canary.as_bytes()).unwrap());
    }

    #[test]
    fn a_wrong_key_is_reported_as_such_and_tampering_as_tampering() {
        let sealed = key(1).seal("name", b"payload").unwrap();
        let err = key(2).open("name", sealed.as_bytes()).unwrap_err();
        assert!(matches!(err, SealError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("another key"), "{err}");
        // Another entry's name: the associated data does not match.
        assert_eq!(
            key(1).open("other", sealed.as_bytes()).unwrap_err(),
            SealError::Tampered
        );
        let mut flipped = sealed.into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key(1).open("name", &flipped).unwrap_err(),
            SealError::Tampered
        );
        assert_eq!(
            key(1).open("name", b"{\"plain\":1}").unwrap_err(),
            SealError::Format
        );
    }

    #[test]
    fn keys_are_hex_base64_or_raw_and_nothing_else() {
        let hex = key(9);
        let b64 = Sealer::from_file_bytes(format!("{}\n", STANDARD.encode([9u8; 32])).as_bytes())
            .unwrap();
        let raw = Sealer::from_file_bytes(&[9u8; 32]).unwrap();
        assert_eq!(hex.key_id(), b64.key_id());
        assert_eq!(hex.key_id(), raw.key_id());
        for bad in ["", "short", &"ab".repeat(31), &"zz".repeat(32)] {
            assert_eq!(
                Sealer::from_file_bytes(bad.as_bytes()).unwrap_err(),
                SealError::BadKey,
                "{bad}"
            );
        }
    }
}
