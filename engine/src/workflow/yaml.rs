//! A YAML value tree that remembers where every value came from, so that a problem
//! found long after parsing (a bad param, a dangling reference) still points at its line.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

use crate::diagnostic::Span;
pub use crate::diagnostic::{PathStep, path_text};

/// A YAML value with spans on every element.
#[derive(Clone, Debug, PartialEq)]
pub enum Yaml {
    /// `null` or `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number with a fraction (or too large for `i64`).
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Spanned<Yaml>>),
    /// A mapping, in file order.
    Map(SpannedMap<Yaml>),
}

/// A YAML mapping with string keys, in file order, keys and values spanned.
#[derive(Clone, Debug, PartialEq)]
pub struct SpannedMap<T> {
    /// `(key, value)` pairs in file order.
    pub entries: Vec<(Spanned<String>, Spanned<T>)>,
}

impl<T> Default for SpannedMap<T> {
    fn default() -> Self {
        SpannedMap {
            entries: Vec::new(),
        }
    }
}

impl<T> SpannedMap<T> {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Spanned<T>> {
        self.entries
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(_, v)| v)
    }

    /// The key `key` itself (for pointing at it).
    pub fn key(&self, key: &str) -> Option<&Spanned<String>> {
        self.entries
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(k, _)| k)
    }

    /// Keys in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.value.as_str())
    }

    /// Entries as `(key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &Spanned<T>)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SpannedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = SpannedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(SpannedMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = access.next_key::<Spanned<String>>()? {
                    entries.push((key, access.next_value()?));
                }
                Ok(SpannedMap { entries })
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(i64::try_from(v).map_or(Yaml::Float(v as f64), Yaml::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Yaml, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = access.next_element()? {
            items.push(item);
        }
        Ok(Yaml::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Yaml, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = access.next_key::<Spanned<String>>()? {
            entries.push((key, access.next_value()?));
        }
        Ok(Yaml::Map(SpannedMap { entries }))
    }
}

impl Yaml {
    /// A short name of the value's kind, for "expected …, found …" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Yaml::Null => "null",
            Yaml::Bool(_) => "a bool",
            Yaml::Int(_) | Yaml::Float(_) => "a number",
            Yaml::Str(_) => "a string",
            Yaml::Seq(_) => "a list",
            Yaml::Map(_) => "a map",
        }
    }
}

/// The span of the deepest value along `path` below `root` (the closest place the tree knows).
pub fn locate(root: &Spanned<Yaml>, path: &[PathStep]) -> Span {
    let mut here = root;
    let mut span = Span::of(&root.referenced);
    for step in path {
        let next = match (&here.value, step) {
            (Yaml::Map(map), PathStep::Key(key)) => {
                map.entries.iter().find(|(k, _)| &k.value == key)
            }
            (Yaml::Seq(items), PathStep::Index(i)) => match items.get(*i) {
                Some(item) => {
                    here = item;
                    span = Span::of(&item.referenced);
                    continue;
                }
                None => None,
            },
            _ => None,
        };
        let Some((_, value)) = next else { break };
        here = value;
        span = Span::of(&value.referenced);
    }
    span
}
