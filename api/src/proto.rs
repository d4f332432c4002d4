//! Istio's resources are protobuf messages written as JSON/YAML: a field that is absent has its
//! default value, and a default value is not written out. `istio_message!` gives every field
//! exactly that behaviour, so the type definitions read like the `.proto` files they mirror.

/// True when a value equals its type's default; used to omit defaults when serializing.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Declares a message struct with camelCase field names, defaults for absent fields, and
/// default values left out of the output.
macro_rules! istio_message {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                #[serde(skip_serializing_if = "crate::proto::is_default")]
                pub $field: $ty,
            )*
        }
    };
}

/// Declares a protobuf enum as Istio spells its values (`SCREAMING_SNAKE_CASE`); the first
/// variant is the default, as in proto3.
macro_rules! istio_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $first:ident $(, $variant:ident)* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            #[default]
            $first,
            $($variant,)*
        }
    };
}

pub(crate) use {istio_enum, istio_message};
