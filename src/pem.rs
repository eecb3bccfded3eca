//! Reading PEM certificate files the same way everywhere: bounded in size, every certificate
//! parsed, an empty file refused; errors name the file and say what is wrong with it.

use std::io::Read as _;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The largest PEM file read: certificate chains and CA bundles (every public root is about
/// 250 KiB) are far smaller.
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// At most [`MAX_PEM_BYTES`] of `path`; the error names it.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{shown} is larger than {MAX_PEM_BYTES} bytes; expected a PEM certificate file"
        ));
    }
    Ok(bytes)
}

/// The certificates in a PEM file, first to last.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a valid PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}
