//! The `JSON` encoding: one object, the map families as nested objects.
//!
//! Read by serde_json through visitors of our own rather than into a `Value`: keys are
//! borrowed from the input, values not kept are skipped without being built, and our
//! refusals keep their reason.

use super::{
    checked, family_index, field_index, no_duplicates, Fields, Malformed, Report, DUPLICATE,
};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

const BAD_JSON: Malformed = Malformed("bad JSON");

/// Parses what follows `JSON `.
pub(super) fn parse(body: &str) -> Result<Report, Malformed> {
    let fault = Fault::default();
    let mut de = serde_json::Deserializer::from_str(body);
    let report = de
        .deserialize_map(ReportVisitor(&fault))
        .and_then(|report| de.end().map(|()| report));
    report.map_err(|_| fault.get().unwrap_or(BAD_JSON))
}

/// Where a visitor leaves the reason it refused: serde's errors carry only text.
type Fault = Cell<Option<Malformed>>;

fn refuse<E: de::Error>(fault: &Fault, reason: Malformed) -> E {
    fault.set(Some(reason));
    E::custom(reason.0)
}

/// The top-level object.
struct ReportVisitor<'f>(&'f Fault);

impl<'de> Visitor<'de> for ReportVisitor<'_> {
    type Value = Report;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a load report object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Report, A::Error> {
        let fault = self.0;
        let mut fields = Fields::default();
        let mut families = 0u8;
        let mut unknown: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            if let Some(index) = field_index(&key) {
                let value = map.next_value()?;
                fields.set(index, value).map_err(|m| refuse(fault, m))?;
            } else if let Some(index) = family_index(&key) {
                if families & (1 << index) != 0 {
                    return Err(refuse(fault, DUPLICATE));
                }
                families |= 1 << index;
                map.next_value_seed(Family(fault))?;
            } else {
                // Of whatever kind a newer backend sends.
                map.next_value::<IgnoredAny>()?;
                unknown.push(key);
            }
        }
        no_duplicates(&mut unknown).map_err(|m| refuse(fault, m))?;
        Ok(fields.report)
    }
}

/// One map family's object: names to numbers, checked and dropped.
struct Family<'f>(&'f Fault);

impl<'de> DeserializeSeed<'de> for Family<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Family<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of numbers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(name)) = map.next_key()? {
            checked(map.next_value()?).map_err(|m| refuse(self.0, m))?;
            names.push(name);
        }
        no_duplicates(&mut names).map_err(|m| refuse(self.0, m))
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(key)))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key.to_owned())))
    }
}
