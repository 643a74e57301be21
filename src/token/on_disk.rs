//! Serde for secrets in the state file: the one place a [`Secret`] is written as its value.
//!
//! `Secret`'s own `Serialize` writes `<redacted>`, which is right everywhere a value may be shown
//! (`/status`, logs, `check-config`); the state file must hold the real value to be of any use.
//! Only the on-disk structs use this, through `#[serde(with = "on_disk::secret")]`, and they are
//! deliberately not `Debug`, so nothing else can print what it writes.

/// `Option<Secret>` as an optional JSON string.
pub mod secret {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::Secret;

    pub fn serialize<S: Serializer>(value: &Option<Secret>, out: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(secret) => out.serialize_some(secret.expose()),
            None => out.serialize_none(),
        }
    }

    /// Every value read is registered for scrubbing by [`Secret::new`].
    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(input)?.map(Secret::new))
    }
}

#[cfg(test)]
mod tests {
    use crate::secret::Secret;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct OnDisk {
        #[serde(default, with = "super::secret")]
        token: Option<Secret>,
    }

    #[test]
    fn the_state_file_gets_the_value_and_everything_else_the_redaction() {
        let value = "canary-on-disk+/=&".repeat(12);
        let disk = OnDisk {
            token: Some(Secret::new(value.clone())),
        };
        let written = serde_json::to_string(&disk).expect("serializable");
        assert!(written.contains(&value));
        let back: OnDisk = serde_json::from_str(&written).expect("readable");
        assert_eq!(
            back.token.as_ref().map(Secret::expose),
            Some(value.as_str())
        );
        let shown = serde_json::to_string(&back.token).expect("serializable");
        assert!(!shown.contains("canary"), "{shown}");
    }
}
