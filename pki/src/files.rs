//! Writing and reading the files a PKI is made of: secrets at mode 0600 from the first byte,
//! several outputs all-or-nothing, and refusals of secrets that others can read.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::PkiError;

fn write_file(path: &Path, contents: &[u8], overwrite: bool, mode: u32) -> Result<(), PkiError> {
    let err = |e: std::io::Error| PkiError::File {
        path: path.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
            "already exists (refusing to overwrite)".into()
        } else {
            e.to_string()
        },
    };
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Writes a secret (created with mode 0600, never wider even for a moment).
pub fn write_private_file(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), PkiError> {
    write_file(path, contents, overwrite, 0o600)
}

/// Writes a public file (mode 0644).
pub fn write_public_file(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), PkiError> {
    write_file(path, contents, overwrite, 0o644)
}

/// One file of an [`OutputSet`].
struct Output {
    path: PathBuf,
    contents: Vec<u8>,
    mode: u32,
    overwrite: bool,
}

/// Files written all-or-nothing: every target is checked first, every file is written and
/// synced under a temporary name in its own directory, then each is moved into place; if any
/// step fails, the files this set created are removed again. A target that exists is refused
/// unless its entry allows overwriting. (A crash between two renames can still leave part of
/// a set; an error cannot.)
#[derive(Default)]
pub struct OutputSet {
    outputs: Vec<Output>,
}

impl OutputSet {
    pub fn new() -> OutputSet {
        OutputSet::default()
    }

    /// A secret: mode 0600.
    pub fn private(&mut self, path: &Path, contents: impl Into<Vec<u8>>, overwrite: bool) {
        self.push(path, contents.into(), 0o600, overwrite);
    }

    /// A public file: mode 0644.
    pub fn public(&mut self, path: &Path, contents: impl Into<Vec<u8>>, overwrite: bool) {
        self.push(path, contents.into(), 0o644, overwrite);
    }

    fn push(&mut self, path: &Path, contents: Vec<u8>, mode: u32, overwrite: bool) {
        self.outputs.push(Output {
            path: path.to_owned(),
            contents,
            mode,
            overwrite,
        });
    }

    /// The paths this set will write, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.outputs.iter().map(|o| o.path.as_path())
    }

    pub fn commit(self) -> Result<(), PkiError> {
        for o in &self.outputs {
            if !o.overwrite && o.path.symlink_metadata().is_ok() {
                return Err(PkiError::File {
                    path: o.path.clone(),
                    reason: "already exists (refusing to overwrite; --force replaces it)".into(),
                });
            }
        }
        let mut temps: Vec<PathBuf> = Vec::new();
        let result = self
            .write_temps(&mut temps)
            .and_then(|()| self.place(&temps));
        for t in &temps {
            let _ = std::fs::remove_file(t);
        }
        result
    }

    fn write_temps(&self, temps: &mut Vec<PathBuf>) -> Result<(), PkiError> {
        for o in &self.outputs {
            let name = o
                .path
                .file_name()
                .ok_or_else(|| PkiError::File {
                    path: o.path.clone(),
                    reason: "not a file name".into(),
                })?
                .to_string_lossy();
            let tmp = o.path.with_file_name(format!(
                ".{name}.tmp-{}-{}",
                std::process::id(),
                temps.len()
            ));
            write_file(&tmp, &o.contents, false, o.mode).map_err(|e| match e {
                PkiError::File { reason, .. } => PkiError::File {
                    path: o.path.clone(),
                    reason,
                },
                other => other,
            })?;
            temps.push(tmp);
        }
        Ok(())
    }

    fn place(&self, temps: &[PathBuf]) -> Result<(), PkiError> {
        let mut placed: Vec<&Path> = Vec::new();
        for (o, tmp) in self.outputs.iter().zip(temps) {
            // Without overwrite, a hard link is the atomic "create if absent".
            let r = if o.overwrite {
                std::fs::rename(tmp, &o.path)
            } else {
                std::fs::hard_link(tmp, &o.path)
            };
            if let Err(e) = r {
                for p in placed {
                    let _ = std::fs::remove_file(p);
                }
                return Err(PkiError::File {
                    path: o.path.clone(),
                    reason: if e.kind() == std::io::ErrorKind::AlreadyExists {
                        "already exists (refusing to overwrite; --force replaces it)".into()
                    } else {
                        e.to_string()
                    },
                });
            }
            if !o.overwrite {
                placed.push(&o.path);
            }
        }
        Ok(())
    }
}

/// Reads a file; the error names it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|e| PkiError::File {
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })
}

/// Reads a text file (PEM); the error names it.
pub fn read_text(path: &Path) -> Result<String, PkiError> {
    String::from_utf8(read_file(path)?).map_err(|_| PkiError::Input {
        path: path.to_owned(),
        reason: "not text (PEM expected)".into(),
    })
}

/// Refuses a secret that the group or others can read, with the fix in the message.
pub fn check_private(path: &Path) -> Result<(), PkiError> {
    let meta = std::fs::metadata(path).map_err(|e| PkiError::File {
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::File {
            path: path.to_owned(),
            reason: format!(
                "holds a secret but is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
                path.display()
            ),
        });
    }
    Ok(())
}

/// Reads a password file (mode 0600 required); one trailing newline is not part of it.
pub fn read_password_file(path: &Path) -> Result<String, PkiError> {
    check_private(path)?;
    let mut text = read_text(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(PkiError::Input {
            path: path.to_owned(),
            reason: "the password file is empty".into(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_with_one_existing_target_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.key");
        let b = dir.path().join("b.pem");
        std::fs::write(&b, "old").unwrap();
        let mut set = OutputSet::new();
        set.private(&a, "secret", false);
        set.public(&b, "new", false);
        let err = set.commit().err().unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    }

    #[test]
    fn a_set_writes_modes_and_overwrites_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.key");
        let b = dir.path().join("b.pem");
        std::fs::write(&b, "old").unwrap();
        let mut set = OutputSet::new();
        set.private(&a, "secret", false);
        set.public(&b, "new", true);
        set.commit().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a), 0o600);
        assert_eq!(mode(&b), 0o644);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn secrets_readable_by_others_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter22\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_password_file(&p).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&p).unwrap(), "hunter22");
    }
}
