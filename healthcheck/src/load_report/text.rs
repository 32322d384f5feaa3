//! The `TEXT` encoding: `key=value` entries separated by commas, spaces allowed around
//! both; map entries are `family.name=value`.

use super::{
    checked, family_index, field_index, no_duplicates, Fields, Malformed, Report, NOT_A_NUMBER,
};

const EMPTY: Malformed = Malformed("empty TEXT report");
const NO_EQUALS: Malformed = Malformed("TEXT entry without '='");
const EMPTY_KEY: Malformed = Malformed("TEXT entry without a key");

/// Parses what follows `TEXT `.
pub(super) fn parse(body: &str) -> Result<Report, Malformed> {
    if body.trim_ascii().is_empty() {
        return Err(EMPTY);
    }
    let mut fields = Fields::default();
    // Keys of the entries not kept, checked for repeats at the end; no allocation
    // unless the report has any.
    let mut others: Vec<&str> = Vec::new();
    for entry in body.split(',') {
        let (key, value) = entry.split_once('=').ok_or(NO_EQUALS)?;
        let (key, value) = (key.trim_ascii(), value.trim_ascii());
        if key.is_empty() {
            return Err(EMPTY_KEY);
        }
        if let Some(index) = field_index(key) {
            fields.set(index, number(value)?)?;
        } else if is_map_entry(key) {
            checked(number(value)?)?;
            others.push(key);
        } else {
            // An unknown key's value may be of a kind this version does not know.
            others.push(key);
        }
    }
    no_duplicates(&mut others)?;
    Ok(fields.report)
}

fn is_map_entry(key: &str) -> bool {
    key.split_once('.')
        .is_some_and(|(family, _)| family_index(family).is_some())
}

fn number(value: &str) -> Result<f64, Malformed> {
    value.parse().map_err(|_| NOT_A_NUMBER)
}
