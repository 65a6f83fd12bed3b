//! `--network`: which network a container gets.

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// A container's network mode (docker's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Its own network namespace with only loopback. The default of states written before
    /// networking existed, so old containers keep what they had.
    #[default]
    None,
    /// The host's network namespace.
    Host,
    /// Its own network namespace on strata's private network: an address, a default route with
    /// outbound access (NAT), DNS and published ports. Rootful through netavark (a bridge with
    /// veth pairs), rootless through slirp4netns.
    Bridge,
}

impl Mode {
    /// Parse `--network` (`bridge`, `none`, `host`; `default` is docker's alias of bridge).
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "bridge" | "default" => Ok(Mode::Bridge),
            "none" => Ok(Mode::None),
            "host" => Ok(Mode::Host),
            other => Err(Error::Invalid(format!(
                "unsupported --network {other:?}: bridge (the default), none or host"
            ))),
        }
    }

    /// Whether the container gets a namespace of its own (everything but host).
    pub fn private_namespace(self) -> bool {
        self != Mode::Host
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::None => "none",
            Mode::Host => "host",
            Mode::Bridge => "bridge",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [Mode::None, Mode::Host, Mode::Bridge] {
            assert_eq!(Mode::parse(&m.to_string()).unwrap(), m);
        }
        assert_eq!(Mode::parse("default").unwrap(), Mode::Bridge);
        let e = Mode::parse("overlay").unwrap_err().to_string();
        assert!(e.contains("overlay") && e.contains("bridge"), "{e}");
        assert!(!Mode::Host.private_namespace());
        assert!(Mode::None.private_namespace());
    }
}
