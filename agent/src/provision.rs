//! The provision probe's optional write check on its ephemeral volume.
//!
//! The provision probe's measurement is the Pod starting at all; with `--path` it also proves the
//! freshly provisioned volume takes data: it writes a small file, fsyncs it, reads it back,
//! compares and removes it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::fio::{DirError, check_dir};

/// Name of the file written by the check.
pub const CHECK_FILE: &str = ".pie-provision-check";

/// Size of the file written by the check.
const CHECK_LEN: usize = 4096;

/// Why the write check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The directory is missing or not a directory.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// Writing or syncing the file failed.
    #[error("cannot write {path:?}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading the file back failed.
    #[error("cannot read back {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The data read back differs.
    #[error("data read back from {0:?} differs from what was written")]
    Mismatch(PathBuf),
}

/// Writes, fsyncs, reads back and removes a small file in `dir`.
pub fn write_check(dir: &Path) -> Result<(), ProvisionError> {
    check_dir(dir)?;
    let path = dir.join(CHECK_FILE);
    let data = pattern();
    let result = write_and_compare(&path, &data);
    // Best effort: a file that was never created has nothing to remove.
    let _ = std::fs::remove_file(&path);
    result
}

fn write_and_compare(path: &Path, data: &[u8]) -> Result<(), ProvisionError> {
    let write_err = |source| ProvisionError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = File::create(path).map_err(write_err)?;
    file.write_all(data).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    let mut back = Vec::with_capacity(data.len());
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut back))
        .map_err(|source| ProvisionError::Read {
            path: path.to_owned(),
            source,
        })?;
    if back != data {
        return Err(ProvisionError::Mismatch(path.to_owned()));
    }
    Ok(())
}

/// Random bytes, so a stale file from an earlier run cannot pass for this one.
fn pattern() -> Vec<u8> {
    let mut rng = fastrand::Rng::new();
    (0..CHECK_LEN).map(|_| rng.u8(..)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_back_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        write_check(tmp.path()).unwrap();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_file_and_unwritable_paths_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let err = write_check(&tmp.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = write_check(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        // sysfs refuses new files even to root, so this fails however the tests run.
        let err = write_check(Path::new("/sys/kernel")).unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }

    #[test]
    fn patterns_differ() {
        assert_ne!(pattern(), pattern());
        assert_eq!(pattern().len(), CHECK_LEN);
    }
}
