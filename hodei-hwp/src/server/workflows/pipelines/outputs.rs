//! A step's outputs: stored by the worker service before its result is
//! applied, read back when the step's end is seen.

use std::collections::BTreeMap;

use hodei_core::JobId;
use hodei_store::{Store, StoreError, decode, encode};

use super::OUTPUTS;

/// Stores what a step's job published, for the steps after it.
///
/// # Errors
///
/// The store failed.
pub(crate) async fn store_outputs<S: Store>(
    store: &S,
    job: JobId,
    attempt: u32,
    outputs: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    store
        .put_record(
            OUTPUTS,
            &format!("{job}/{attempt}"),
            encode("outputs", outputs)?,
        )
        .await
        .map(|_| ())
}

pub(super) async fn load_outputs<S: Store>(
    store: &S,
    job: JobId,
    attempt: u32,
) -> BTreeMap<String, String> {
    match store.record(OUTPUTS, &format!("{job}/{attempt}")).await {
        Ok(Some(v)) => decode("outputs", &v).unwrap_or_default(),
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            tracing::warn!(%job, error = %e, "cannot read a step's outputs");
            BTreeMap::new()
        }
    }
}
