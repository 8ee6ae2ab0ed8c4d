//! Argument conversion and validation shared by every class.
//!
//! The pure-Python references (`dedup/reference.py`, `routing/load_index.py`,
//! `gateway/timing_wheel.py`) mirror these helpers one for one, so that both
//! implementations raise the same exception type for the same bad input.
//!
//! * text ids: `str` only (or `str`/`bytes` for Dedup keys), encoded as UTF-8
//!   with the `surrogatepass` error handler, so lone surrogates are accepted
//!   and the encoding stays injective;
//! * per-operation integers (keys, deadlines, times, seqs): `u64`; not an int
//!   -> TypeError, negative or >= 2**64 -> OverflowError;
//! * configuration integers: `i64`; not an int -> TypeError, outside i64 ->
//!   OverflowError, then range checks -> ValueError;
//! * flags: exactly `bool`, else TypeError.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyString};

/// Longest Dedup key (conv + sender + cid bytes) and longest agent/group id.
pub const MAX_KEY_BYTES: usize = 1024;

const UTF8: &[u8] = b"utf-8\0";
const SURROGATEPASS: &[u8] = b"surrogatepass\0";

/// `s.encode("utf-8", "surrogatepass")`; never fails for a real `str`
/// except on memory exhaustion.
fn encode_surrogatepass<'py>(s: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
    let py = s.py();
    // SAFETY: `s` is a valid str; both C strings are NUL-terminated; the
    // returned new reference (or NULL + exception) is handed to PyO3.
    unsafe {
        let raw = ffi::PyUnicode_AsEncodedString(
            s.as_ptr(),
            UTF8.as_ptr().cast(),
            SURROGATEPASS.as_ptr().cast(),
        );
        Ok(Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyBytes>())
    }
}

/// `b.decode("utf-8", "surrogatepass")` for bytes produced by
/// [`encode_surrogatepass`].
pub fn decode_surrogatepass<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len =
        ffi::Py_ssize_t::try_from(b.len()).map_err(|_| PyValueError::new_err("id too long"))?;
    // SAFETY: pointer/length describe a live slice; errors become PyErr.
    unsafe {
        let raw = ffi::PyUnicode_DecodeUTF8(b.as_ptr().cast(), len, SURROGATEPASS.as_ptr().cast());
        Ok(Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyString>())
    }
}

/// Number of code points of a str (a lower bound of its UTF-8 length).
fn code_points(s: &Bound<'_, PyString>) -> PyResult<usize> {
    // SAFETY: `s` is a valid str.
    let n = unsafe { ffi::PyUnicode_GetLength(s.as_ptr()) };
    if n < 0 {
        return Err(PyErr::fetch(s.py()));
    }
    Ok(n as usize)
}

/// One half of a Dedup key after the type check.
enum Part<'a, 'py> {
    Bytes(&'a Bound<'py, PyBytes>),
    Str(&'a Bound<'py, PyString>),
}

fn part<'a, 'py>(obj: &'a Bound<'py, PyAny>, what: &str) -> PyResult<Part<'a, 'py>> {
    if let Ok(s) = obj.cast::<PyString>() {
        Ok(Part::Str(s))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(Part::Bytes(b))
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} must be str or bytes, not {}",
            type_name(obj)
        )))
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

fn too_long() -> PyErr {
    PyValueError::new_err(format!("key longer than {MAX_KEY_BYTES} bytes"))
}

/// A Dedup key: `len(conv) as u16 LE || conv || len(sender) as u16 LE || sender || cid`,
/// at most 4 + [`MAX_KEY_BYTES`] bytes, kept on the stack.
pub struct DedupKey {
    buf: [u8; MAX_KEY_BYTES + 4],
    len: usize,
}

impl DedupKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Build the unambiguous Dedup key from (conv, sender, cid): a client id is
/// chosen by its sender, so two senders' equal ids are two keys.
/// Order of checks: type of conv, sender, cid (TypeError), then the combined
/// length of the three (ValueError).
pub fn dedup_key(
    conv: &Bound<'_, PyAny>,
    sender: &Bound<'_, PyAny>,
    cid: &Bound<'_, PyAny>,
) -> PyResult<DedupKey> {
    let parts = [part(conv, "conv")?, part(sender, "sender")?, part(cid, "cid")?];
    // Cheap early rejection: a str of n code points encodes to >= n bytes.
    let mut lower = 0usize;
    for p in &parts {
        lower = lower.saturating_add(match p {
            Part::Bytes(b) => b.as_bytes().len(),
            Part::Str(s) => code_points(s)?,
        });
    }
    if lower > MAX_KEY_BYTES {
        return Err(too_long());
    }
    let mut key = DedupKey {
        buf: [0u8; MAX_KEY_BYTES + 4],
        len: 0,
    };
    let mut body = 0usize; // bytes of the parts themselves, without length prefixes
    for (i, p) in parts.iter().enumerate() {
        let owned;
        let bytes: &[u8] = match p {
            Part::Bytes(b) => b.as_bytes(),
            Part::Str(s) => {
                owned = encode_surrogatepass(s)?;
                owned.as_bytes()
            }
        };
        body += bytes.len();
        if body > MAX_KEY_BYTES {
            return Err(too_long());
        }
        if i < 2 {
            // body <= MAX_KEY_BYTES < 2**16 here.
            key.buf[key.len..key.len + 2].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
            key.len += 2;
        }
        key.buf[key.len..key.len + bytes.len()].copy_from_slice(bytes);
        key.len += bytes.len();
    }
    Ok(key)
}

/// A text id (agent or group): `str` only, UTF-8/surrogatepass, at most
/// [`MAX_KEY_BYTES`] bytes. Returns the encoded bytes object (borrow its
/// bytes for lookups; copy them only to store a new id).
pub fn str_id<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyBytes>> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be str, not {}", type_name(obj))))?;
    if code_points(s)? > MAX_KEY_BYTES {
        return Err(too_long());
    }
    let b = encode_surrogatepass(s)?;
    if b.as_bytes().len() > MAX_KEY_BYTES {
        return Err(too_long());
    }
    Ok(b)
}

/// Like [`str_id`] but answers `None` instead of raising (for `__contains__`).
pub fn str_id_lenient<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, PyBytes>> {
    str_id(obj, "id").ok()
}

/// A per-operation integer: u64 (TypeError / OverflowError).
pub fn u64_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    obj.extract::<u64>()
}

/// A configuration integer: i64 (TypeError / OverflowError).
pub fn i64_arg(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    obj.extract::<i64>()
}

/// Exactly `True` or `False`.
pub fn bool_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<bool> {
    match obj.cast::<PyBool>() {
        Ok(b) => Ok(b.is_true()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be bool, not {}",
            type_name(obj)
        ))),
    }
}
