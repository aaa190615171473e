//! `[health]`: the health and metrics HTTP server.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, DEFAULT_HEALTH_LISTEN};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) listen: Option<String>,
}

/// `[health]`: the health and metrics HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSection {
    /// Listen address; `None` when disabled (`listen = "off"`).
    pub listen: Option<SocketAddr>,
}

/// Validates `[health]`.
pub(super) fn validate(raw: &RawHealth) -> Result<HealthSection, ConfigError> {
    let health = HealthSection {
        listen: match raw.listen.as_deref().map(str::trim) {
            None => Some(DEFAULT_HEALTH_LISTEN.parse().expect("valid default")),
            Some("off") | Some("") => None,
            Some(s) => Some(s.parse().map_err(|_| {
                invalid(
                    "health.listen",
                    format!("{s:?} is not an address:port like \"0.0.0.0:9472\" (or \"off\")"),
                )
            })?),
        },
    };
    Ok(health)
}

impl From<&HealthSection> for RawHealth {
    fn from(s: &HealthSection) -> RawHealth {
        RawHealth {
            listen: Some(
                s.listen
                    .map_or_else(|| "off".to_string(), |a| a.to_string()),
            ),
        }
    }
}
