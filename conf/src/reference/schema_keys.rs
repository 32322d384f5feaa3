//! The keys the schema accepts, read from serde itself: a deserializer that reads no
//! input but records the field names every struct asks for
//! (`deserialize_struct(name, FIELDS, visitor)`) and walks into each field's type,
//! through `Option`s and one element of each list. A key added to `schema` shows up
//! here without anyone listing it.

use crate::schema::RawConfig;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::BTreeSet;

/// Every key path the schema accepts, as the reference writes them
/// (`pools[].health_check.interval`), sorted.
pub fn schema_keys() -> Vec<String> {
    let keys = RefCell::new(BTreeSet::new());
    RawConfig::deserialize(Recorder {
        path: String::new(),
        keys: &keys,
    })
    .expect("the recorder answers every type the schema uses");
    keys.into_inner().into_iter().collect()
}

/// Stands for the value at `path`, of whatever type serde asks for.
struct Recorder<'k> {
    path: String,
    keys: &'k RefCell<BTreeSet<String>>,
}

impl<'de> de::Deserializer<'de> for Recorder<'_> {
    type Error = Error;

    /// Untagged enums (`RawStatus`) ask for anything: a number is one of their forms.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let element = Recorder {
            path: format!("{}[]", self.path),
            keys: self.keys,
        };
        visitor.visit_seq(OneElement(Some(element)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let fields: Vec<String> = fields
            .iter()
            .map(|f| match self.path.as_str() {
                "" => f.to_string(),
                parent => format!("{parent}.{f}"),
            })
            .collect();
        self.keys.borrow_mut().extend(fields.iter().cloned());
        visitor.visit_map(Fields {
            names: fields.into_iter(),
            current: None,
            keys: self.keys,
        })
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 char bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct map enum identifier ignored_any
    }
}

/// A list of one element, so the element's type is walked once.
struct OneElement<'k>(Option<Recorder<'k>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|r| seed.deserialize(r)).transpose()
    }
}

/// A struct's fields as a map: each name, then a recorder for its value.
struct Fields<'k> {
    names: std::vec::IntoIter<String>,
    current: Option<String>,
    keys: &'k RefCell<BTreeSet<String>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(path) = self.names.next() else {
            return Ok(None);
        };
        let name = path.rsplit('.').next().unwrap_or(&path).to_string();
        self.current = Some(path);
        let de: StrDeserializer<'_, Error> = name.as_str().into_deserializer();
        seed.deserialize(de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let path = self.current.take().expect("a key before its value");
        seed.deserialize(Recorder {
            path,
            keys: self.keys,
        })
    }
}
