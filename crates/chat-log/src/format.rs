//! The log's format version: how the records a store keeps in postcard (events, the snapshot of the core's
//! state, and the attachments and mentions of message rows) are encoded, and how a database written by an
//! older build is brought to this one's encoding.
//!
//! postcard is not self-describing: a struct is its fields in order with no names and no count, so bytes
//! written with one shape of a type do not decode with another, and a snapshot cannot be rebuilt by replaying
//! the log (the log is pruned before the newest snapshot). So a database records the version of its encoding
//! ([`FORMAT_VERSION`] for what this build writes; a database with none recorded is version 1), a store
//! refuses a version it cannot read ([`check`]), and a migration decodes each stored record with the shapes
//! its version had and writes it again as this build encodes it ([`upgrade`]).
//!
//! The changes the rules allow are cheap to ship:
//! - a variant appended at the end of an enum (`chat_core::EventKind` included) reads old bytes as they are:
//!   bump [`FORMAT_VERSION`] (so that an older build refuses the database instead of failing on the new
//!   variant) and add nothing else;
//! - a field appended at the end of a struct, with `#[serde(default)]`: bump [`FORMAT_VERSION`] and add one
//!   [`Shape`] line to [`SHAPES`] saying how many fields the struct had up to the previous version. Old bytes
//!   are then read with the old field count, and the new field takes its default.
//!
//! Anything else (a field removed, reordered or retyped) needs a decoder for the old bytes written by hand,
//! in [`upgrade`]. The procedure is in ARCHITECTURE.md ("When a serialized type changes").

use std::fmt;

use serde::Serialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::StoreError;

/// The format version this build writes and reads.
///
/// - 1: the encoding of chatd 0.1, when no version was recorded.
/// - 2: the same encoding, with the version recorded in the database. Migrating from 1 decodes every stored
///   record, so a database is stamped 2 only once all of it is known to decode.
/// - 3: a channel's `Ban` gains `bound`, the users it holds whatever their nick (a ban of an older snapshot
///   binds no one); `EventKind::PresenceUpdated` is appended (live only, never stored, but an older build must
///   not meet it either).
/// - 4: federation. `User` gains `home` (a remote user's server), the snapshot's `State` gains `relayed`
///   and `origins`; `EventKind::RemoteUserCreated` and `EventKind::Relayed` are appended.
pub const FORMAT_VERSION: u32 = 4;

/// The oldest format version this build can migrate from. Below it the database is refused.
pub const OLDEST_FORMAT: u32 = 1;

/// How many fields a struct had in older format versions: one line per struct per change of its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The struct's serde name (its Rust name unless renamed). chat-core has one serialized struct per name.
    pub name: &'static str,
    /// The last format version in which it had `fields` fields.
    pub until: u32,
    /// How many (non-skipped) fields it had then: the first `fields` of today's, in order.
    pub fields: usize,
}

/// Every struct that gained trailing fields since [`OLDEST_FORMAT`]. When a snapshot type gains a field (at
/// the end, with `#[serde(default)]`), add `Shape { name: "Ban", until: 2, fields: 3 }` for a `Ban` that had
/// three fields up to version 2, and bump [`FORMAT_VERSION`] to 3.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "Ban",
        until: 2,
        fields: 3,
    },
    Shape {
        name: "User",
        until: 3,
        fields: 14,
    },
    Shape {
        name: "State",
        until: 3,
        fields: 18,
    },
];

/// Whether this build can open a database of format `found` as it is (`Ok(false)`), after a migration
/// (`Ok(true)`), or not at all (a typed error whose message names both versions and what to do).
pub fn check(found: u32) -> Result<bool, StoreError> {
    if found > FORMAT_VERSION {
        Err(StoreError::FormatTooNew {
            found,
            known: FORMAT_VERSION,
        })
    } else if found < OLDEST_FORMAT {
        Err(StoreError::FormatUnsupported {
            found,
            oldest: OLDEST_FORMAT,
            known: FORMAT_VERSION,
        })
    } else {
        Ok(found < FORMAT_VERSION)
    }
}

/// Encodes a record as this build stores it.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a record stored at format version `version` (at most [`FORMAT_VERSION`]) into today's type: with
/// the struct shapes of that version, so that fields added since take their defaults.
pub fn decode_from<T: DeserializeOwned>(version: u32, bytes: &[u8]) -> Result<T, postcard::Error> {
    if version >= FORMAT_VERSION {
        return postcard::from_bytes(bytes);
    }
    decode_with(SHAPES, version, bytes)
}

/// [`decode_from`] with a table of shapes of its own (for tests of the mechanism, with types of their own).
pub fn decode_with<T: DeserializeOwned>(
    shapes: &[Shape],
    version: u32,
    bytes: &[u8],
) -> Result<T, postcard::Error> {
    let mut inner = postcard::Deserializer::from_bytes(bytes);
    let at = At { shapes, version };
    let value = T::deserialize(Shaped {
        inner: &mut inner,
        at,
    })?;
    if inner.finalize()?.is_empty() {
        Ok(value)
    } else {
        // Bytes left over mean the shapes do not describe this record: a missing `Shape` line, not data.
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Rewrites one stored record of format `version` as this build encodes it: the step a migration takes for
/// every event, snapshot and message row. `None` when the bytes are already today's.
pub fn upgrade<T: DeserializeOwned + Serialize>(
    version: u32,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, postcard::Error> {
    // Every change so far is a trailing field, read through `SHAPES`. A hand-written decoder for an
    // incompatible change would go here, matched on `version`, before the shape-directed decoding below.
    let value: T = decode_from(version, bytes)?;
    let again = encode(&value)?;
    Ok((again != bytes).then_some(again))
}

/// The version being decoded and the shapes to decode it with.
#[derive(Clone, Copy)]
struct At<'s> {
    shapes: &'s [Shape],
    version: u32,
}

impl At<'_> {
    /// The number of fields struct `name` had at this version, if it has changed since.
    fn fields(&self, name: &str) -> Option<usize> {
        self.shapes
            .iter()
            .filter(|s| s.name == name && s.until >= self.version)
            .min_by_key(|s| s.until)
            .map(|s| s.fields)
    }
}

// --- Shape-directed decoding ------------------------------------------------------------------------------
//
// A deserializer that passes everything through to postcard's, except that a struct listed in SHAPES is
// read with the field count it had at `version`. serde's derived visitors give a field marked
// `#[serde(default)]` its default when the sequence ends before it, which is what a shorter old struct
// looks like. Every nested value goes through the same wrapper, so a changed struct is found at any depth.

struct Shaped<'s, D> {
    inner: D,
    at: At<'s>,
}

struct ShapedVisitor<'s, V> {
    inner: V,
    at: At<'s>,
}

struct ShapedSeed<'s, S> {
    inner: S,
    at: At<'s>,
}

struct ShapedAccess<'s, A> {
    inner: A,
    at: At<'s>,
}

impl<'s, 'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ShapedSeed<'s, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Shaped {
            inner: deserializer,
            at: self.at,
        })
    }
}

macro_rules! forward {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.inner.$method(ShapedVisitor { inner: visitor, at: self.at })
            }
        )*
    };
}

impl<'s, 'de, D: Deserializer<'de>> Deserializer<'de> for Shaped<'s, D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        match self.at.fields(name) {
            // postcard reads a struct as a tuple of its fields; the old struct is the shorter tuple.
            Some(old) if old < fields.len() => self.inner.deserialize_tuple(old, visitor),
            _ => self.inner.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = ShapedVisitor {
            inner: visitor,
            at: self.at,
        };
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! pass {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'s, 'de, V: Visitor<'de>> Visitor<'de> for ShapedVisitor<'s, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
        visit_str: &str,
        visit_borrowed_str: &'de str,
        visit_string: String,
        visit_bytes: &[u8],
        visit_borrowed_bytes: &'de [u8],
        visit_byte_buf: Vec<u8>,
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Shaped {
            inner: deserializer,
            at: self.at,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Shaped {
            inner: deserializer,
            at: self.at,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(ShapedAccess {
            inner: seq,
            at: self.at,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(ShapedAccess {
            inner: map,
            at: self.at,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(ShapedAccess {
            inner: data,
            at: self.at,
        })
    }
}

impl<'s, 'de, A: SeqAccess<'de>> SeqAccess<'de> for ShapedAccess<'s, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(ShapedSeed {
            inner: seed,
            at: self.at,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'s, 'de, A: MapAccess<'de>> MapAccess<'de> for ShapedAccess<'s, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(ShapedSeed {
            inner: seed,
            at: self.at,
        })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(ShapedSeed {
            inner: seed,
            at: self.at,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'s, 'de, A: EnumAccess<'de>> EnumAccess<'de> for ShapedAccess<'s, A> {
    type Error = A::Error;
    type Variant = ShapedAccess<'s, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let at = self.at;
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((value, ShapedAccess { inner: variant, at }))
    }
}

impl<'s, 'de, A: VariantAccess<'de>> VariantAccess<'de> for ShapedAccess<'s, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(ShapedSeed {
            inner: seed,
            at: self.at,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            ShapedVisitor {
                inner: visitor,
                at: self.at,
            },
        )
    }

    // A struct variant's fields are read as they are today: serde does not name the variant here, so an
    // enum's struct variants cannot be listed in SHAPES. Event variants never change (new ones are appended);
    // a snapshot enum whose struct variant must grow needs a hand-written decoder in `upgrade`.
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            ShapedVisitor {
                inner: visitor,
                at: self.at,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    //! The shape-directed decoding with types of its own: a `Ban` that gained a field in "version 3", met at
    //! every depth postcard can put it (a sequence, a map, an option, a newtype enum variant, a tuple).

    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{Shape, decode_with, encode};

    /// `Ban` as it was up to version 2.
    #[derive(Serialize)]
    struct OldBan {
        mask: String,
        by: u64,
        at: u64,
    }

    /// `Ban` today: `users` appended with a default, as the rules ask.
    #[derive(Debug, Default, PartialEq, Deserialize, Serialize)]
    struct Ban {
        mask: String,
        by: u64,
        at: u64,
        #[serde(default)]
        users: Vec<u64>,
    }

    #[derive(Serialize)]
    enum OldEntry {
        Nothing,
        One(OldBan),
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    enum Entry {
        Nothing,
        One(Ban),
    }

    #[derive(Serialize)]
    struct OldChannel {
        name: String,
        bans: Vec<OldBan>,
        by_user: BTreeMap<u64, OldBan>,
        latest: Option<OldBan>,
        entry: OldEntry,
        pair: (OldBan, u8),
        topic: String,
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Channel {
        name: String,
        bans: Vec<Ban>,
        by_user: BTreeMap<u64, Ban>,
        latest: Option<Ban>,
        entry: Entry,
        pair: (Ban, u8),
        topic: String,
    }

    const SHAPES: &[Shape] = &[Shape {
        name: "Ban",
        until: 2,
        fields: 3,
    }];

    fn old_ban(mask: &str) -> OldBan {
        OldBan {
            mask: mask.into(),
            by: 7,
            at: 1_800_000_000_000,
        }
    }

    fn ban(mask: &str) -> Ban {
        Ban {
            mask: mask.into(),
            by: 7,
            at: 1_800_000_000_000,
            users: Vec::new(),
        }
    }

    fn old_channel() -> OldChannel {
        OldChannel {
            name: "#rust".into(),
            bans: vec![old_ban("a!*@*"), old_ban("b!*@*")],
            by_user: BTreeMap::from([(3, old_ban("c!*@*"))]),
            latest: Some(old_ban("d!*@*")),
            entry: OldEntry::One(old_ban("e!*@*")),
            pair: (old_ban("f!*@*"), 9),
            topic: "kept after every ban".into(),
        }
    }

    #[test]
    fn an_old_struct_decodes_with_its_old_shape_at_any_depth() {
        let bytes = encode(&old_channel()).unwrap();
        let channel: Channel = decode_with(SHAPES, 2, &bytes).unwrap();
        assert_eq!(
            channel,
            Channel {
                name: "#rust".into(),
                bans: vec![ban("a!*@*"), ban("b!*@*")],
                by_user: BTreeMap::from([(3, ban("c!*@*"))]),
                latest: Some(ban("d!*@*")),
                entry: Entry::One(ban("e!*@*")),
                pair: (ban("f!*@*"), 9),
                topic: "kept after every ban".into(),
            }
        );
        // Version 1 had the same shape as version 2.
        let again: Channel = decode_with(SHAPES, 1, &bytes).unwrap();
        assert_eq!(again, channel);
        let nothing = encode(&OldEntry::Nothing).unwrap();
        assert_eq!(
            decode_with::<Entry>(SHAPES, 2, &nothing).unwrap(),
            Entry::Nothing
        );
    }

    #[test]
    fn without_its_shape_line_an_old_struct_does_not_decode() {
        let bytes = encode(&old_channel()).unwrap();
        assert!(decode_with::<Channel>(&[], 2, &bytes).is_err());
    }

    #[test]
    fn todays_bytes_decode_as_they_are_past_the_shapes_last_version() {
        let mut today = Channel {
            name: "#rust".into(),
            bans: vec![ban("a!*@*")],
            by_user: BTreeMap::new(),
            latest: None,
            entry: Entry::Nothing,
            pair: (ban("f!*@*"), 1),
            topic: String::new(),
        };
        today.bans[0].users = vec![1, 2];
        let bytes = encode(&today).unwrap();
        assert_eq!(decode_with::<Channel>(SHAPES, 3, &bytes).unwrap(), today);
    }

    #[test]
    fn versions_are_checked_against_this_build() {
        use super::{FORMAT_VERSION, OLDEST_FORMAT, check};
        use crate::StoreError;
        assert!(!check(FORMAT_VERSION).unwrap());
        assert!(check(OLDEST_FORMAT).unwrap());
        assert!(matches!(
            check(FORMAT_VERSION + 1),
            Err(StoreError::FormatTooNew { .. })
        ));
        assert!(matches!(
            check(OLDEST_FORMAT - 1),
            Err(StoreError::FormatUnsupported { .. })
        ));
    }
}
