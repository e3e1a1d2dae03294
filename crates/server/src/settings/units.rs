//! How the configuration spells values: durations are whole milliseconds
//! or seconds in keys named `…_ms` and `…_secs`, read once into
//! [`Duration`]s; a choice is one of a few names, read into an enum.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A `…_ms` key.
pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// A `…_secs` key.
pub(super) fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// An enum spelled as one of a few names in the configuration.
pub(crate) trait Named: Copy + PartialEq + 'static {
    /// The setting, as an error names it.
    const WHAT: &'static str;
    /// Every value and its name.
    const NAMES: &'static [(Self, &'static str)];

    /// The value called `name`, or a one-line error listing the names.
    fn named(name: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(value, _)| *value)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(_, n)| *n).collect();
                format!(
                    "{} must be one of {}, not '{name}'",
                    Self::WHAT,
                    names.join(", ")
                )
            })
    }

    /// This value's name.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(value, _)| *value == self)
            .map_or("", |(_, n)| *n)
    }
}

/// `Deserialize` (by name) and `Display` for a [`Named`] enum.
macro_rules! named {
    ($ty:ty) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                <$ty as $crate::settings::units::Named>::named(&name)
                    .map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::settings::units::Named::name(*self))
            }
        }
    };
}

pub(crate) use named;
