//! Linux capabilities by name, and the default set a container keeps
//! (the lists live in berth_proto::security, which the server checks
//! `--cap-add` and `--cap-drop` with).

use berth_proto::security::CAPABILITIES;

/// The capabilities Docker leaves a container by default.
pub use berth_proto::security::DEFAULT_CAPABILITIES as DEFAULT;

/// The kernel's number of a capability name.
pub fn number(name: &str) -> Option<u32> {
    CAPABILITIES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// Every capability number the kernel may know.
pub fn all_numbers() -> impl Iterator<Item = u32> {
    0..CAPABILITIES.len() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_match_the_kernel() {
        assert_eq!(super::number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(super::number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert!(super::DEFAULT.iter().all(|c| super::number(c).is_some()));
    }
}
