//! Device trust levels: `untrusted < verified < trusted`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How far a device is trusted. Ordered: a requirement of `verified` is met
/// by `verified` and `trusted` devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    /// Unknown or untrusted: where every new device starts.
    #[default]
    Untrusted,
    /// The device's identity has been verified by an admin.
    Verified,
    /// Fully trusted (e.g. the local machine with `autoTrustLocal`).
    Trusted,
}

impl TrustLevel {
    /// The written form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::Verified => "verified",
            Self::Trusted => "trusted",
        }
    }

    /// Parses `trusted`, `verified` or `untrusted`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "untrusted" => Ok(Self::Untrusted),
            "verified" => Ok(Self::Verified),
            "trusted" => Ok(Self::Trusted),
            other => Err(format!("unknown trust level {other:?}: use trusted, verified or untrusted")),
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrustLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}
