//! The two stages of a config: as read, and checked.
//!
//! A few values with structure (CIDRs, backend addresses, keys) must not stop the reading of
//! the file at the first bad one, because `check` reports every problem at once, with its
//! place. So the config types take a [`Stage`]: in [`Lenient`] such a value is a
//! [`Parsed`], either the value or the text it was rejected with and why; validation reports
//! every rejected one. Once nothing is wrong, the same YAML tree is read again as
//! [`Checked`], where the value is just its type, and that is what the runtime gets: it
//! never sees a value that did not parse, so it has nothing to skip or default.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A value written as text in the file that parses into a type; its schema describes the
/// text (`schema.rs`).
pub trait Text:
    Sized + Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + JsonSchema
{
    /// The value `text` stands for, or why it stands for none (said to the operator).
    fn parse(text: &str) -> Result<Self, String>;
}

/// What a config type holds for a [`Text`] value: `Of<T>` is `Parsed<T>` as read and `T`
/// once checked.
pub trait Stage: Clone + fmt::Debug + PartialEq + 'static {
    type Of<T: Text>: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + JsonSchema;
}

/// The config as read from the file, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Lenient {}

/// The config once validation found nothing wrong: what the runtime is built from.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {}

/// The schema derive names a generic type's id after its parameters; a stage is never a
/// value in the file, so it describes nothing.
macro_rules! stage_name {
    ($ty:ty, $name:literal) => {
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!(false)
            }
        }
    };
}

stage_name!(Lenient, "Lenient");
stage_name!(Checked, "Checked");

impl Stage for Lenient {
    type Of<T: Text> = Parsed<T>;
}

impl Stage for Checked {
    type Of<T: Text> = T;
}

/// A value as read: parsed, or the text that did not parse with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<T> {
    Ok(T),
    Rejected { text: String, error: String },
}

impl<T> Parsed<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Parsed::Ok(v) => Some(v),
            Parsed::Rejected { .. } => None,
        }
    }
}

impl<'de, T: Text> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match T::parse(&text) {
            Ok(v) => Parsed::Ok(v),
            Err(error) => Parsed::Rejected { text, error },
        })
    }
}

/// The file's schema is that of a valid file: a value as read has the schema of its type.
impl<T: JsonSchema> JsonSchema for Parsed<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<T: Serialize> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Parsed::Ok(v) => v.serialize(s),
            Parsed::Rejected { text, .. } => s.serialize_str(text),
        }
    }
}

/// Serde goes through the text form (`try_from = "String"`, `into = "String"`), and the type
/// is a [`Text`] a config stage can hold.
macro_rules! text_value {
    ($ty:ty) => {
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                <$ty>::parse(&text)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
        impl $crate::config::stage::Text for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                <$ty>::parse(text)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    #[test]
    fn lenient_keeps_the_rejected_text_and_checked_refuses_it() {
        let read: Vec<Parsed<Cidr>> = serde_yaml::from_str("[10.0.0.0/8, nope]").expect("read");
        assert!(matches!(&read[0], Parsed::Ok(c) if c.to_string() == "10.0.0.0/8"));
        assert!(
            matches!(&read[1], Parsed::Rejected { text, error } if text == "nope" && error.contains("invalid CIDR"))
        );
        assert_eq!(
            serde_yaml::to_string(&read).expect("write"),
            "- 10.0.0.0/8\n- nope\n"
        );
        assert!(serde_yaml::from_str::<Vec<Cidr>>("[10.0.0.0/8, nope]").is_err());
    }
}
