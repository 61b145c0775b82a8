//! What can go wrong reading or running a packed model.

/// A deployment error: always says what is wrong and, for files, where.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The file ends before a part it announces.
    #[error("truncated file: {what} needs {need} bytes at offset {offset}, the file has {have}; re-export the model")]
    Truncated {
        /// The part being read.
        what: &'static str,
        /// Byte offset of the part.
        offset: usize,
        /// Bytes the part needs.
        need: usize,
        /// Bytes the file has.
        have: usize,
    },
    /// Not a qatlab model file.
    #[error("not a qatlab model file (magic {found:?}, expected {expected:?})")]
    BadMagic {
        /// First bytes found.
        found: Vec<u8>,
        /// The magic expected.
        expected: &'static [u8],
    },
    /// A format version this build cannot read.
    #[error("model file version {found}; this build reads versions {oldest} to {newest}: re-export with this qat or upgrade qat")]
    Version {
        /// Version in the file.
        found: u32,
        /// Oldest version this build reads.
        oldest: u32,
        /// Version this build writes.
        newest: u32,
    },
    /// The stored checksum does not match the contents.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupted")]
    Checksum {
        /// CRC-32 stored in the file.
        stored: u32,
        /// CRC-32 of the contents.
        computed: u32,
    },
    /// The header or a tensor is inconsistent.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// A model this deployment cannot run (or export).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result with [`DeployError`].
pub type Result<T> = std::result::Result<T, DeployError>;

/// Shorthand for an [`DeployError::Invalid`] error.
pub(crate) fn invalid(message: impl Into<String>) -> DeployError {
    DeployError::Invalid(message.into())
}
