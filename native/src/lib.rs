//! chatgw_native: native core of the chat gateway (module registration only).

mod dedup;
mod keys;
mod load_index;
mod timing_wheel;

use pyo3::prelude::*;

/// Native Dedup, LoadIndex and TimingWheel (see docs/native.md).
#[pymodule]
fn chatgw_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<dedup::Dedup>()?;
    m.add_class::<load_index::LoadIndex>()?;
    m.add_class::<timing_wheel::TimingWheel>()?;
    m.add("MAX_KEY_BYTES", keys::MAX_KEY_BYTES)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
