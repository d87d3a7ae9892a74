//! The dtype table: the 22 stored dtypes, their names in the footer and their element sizes.
//!
//! Every element is a whole number of bytes, so byte ranges are always `elements * size`.
//! The one packed sub-byte type, fp4 (`float4_e2m1fn_x2`), is held as torch holds it: one
//! element is one byte carrying two 4-bit e2m1 values (the first in the low nibble), and a
//! shape counts those bytes (torch's shape). safetensors' `F4` counts 4-bit values instead, so
//! its header shape is this shape with the last dimension doubled (see
//! [`crate::weights::safetensors_shape`]).
//!
//! ```
//! use flashpack::Dtype;
//! let d: Dtype = "bfloat16".parse().unwrap();
//! assert_eq!(d.size(), 2);
//! assert_eq!(d.name(), "bfloat16");
//! assert!(d.is_floating_point());
//! ```
use std::fmt;
use std::str::FromStr;

use super::FormatError;

macro_rules! dtypes {
    ($( $variant:ident = $name:literal, $size:literal, $float:literal; )*) => {
        /// A stored element type; names are torch's without the `torch.` prefix.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Dtype { $( #[doc = concat!("`", $name, "` (", $size, " bytes)")] $variant, )* }

        impl Dtype {
            /// Every dtype the format stores.
            pub const ALL: &'static [Dtype] = &[ $( Dtype::$variant, )* ];

            /// The name written in the footer.
            pub fn name(self) -> &'static str {
                match self { $( Dtype::$variant => $name, )* }
            }

            /// Bytes per element.
            pub fn size(self) -> usize {
                match self { $( Dtype::$variant => $size, )* }
            }

            /// Real floating-point types (the ones a `target_dtype` cast applies to); packed fp4
            /// is not one (torch cannot cast a pair of values held in one byte).
            pub fn is_floating_point(self) -> bool {
                match self { $( Dtype::$variant => $float, )* }
            }
        }

        impl FromStr for Dtype {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                match s {
                    $( $name => Ok(Dtype::$variant), )*
                    other => Err(FormatError::UnknownDtype(other.to_string())),
                }
            }
        }
    };
}

dtypes! {
    F64 = "float64", 8, true;
    F32 = "float32", 4, true;
    F16 = "float16", 2, true;
    BF16 = "bfloat16", 2, true;
    F8E4M3 = "float8_e4m3fn", 1, true;
    F8E4M3Fnuz = "float8_e4m3fnuz", 1, true;
    F8E5M2 = "float8_e5m2", 1, true;
    F8E5M2Fnuz = "float8_e5m2fnuz", 1, true;
    F8E8M0 = "float8_e8m0fnu", 1, true;
    C128 = "complex128", 16, false;
    C64 = "complex64", 8, false;
    C32 = "complex32", 4, false;
    I64 = "int64", 8, false;
    U64 = "uint64", 8, false;
    I32 = "int32", 4, false;
    U32 = "uint32", 4, false;
    I16 = "int16", 2, false;
    U16 = "uint16", 2, false;
    I8 = "int8", 1, false;
    U8 = "uint8", 1, false;
    Bool = "bool", 1, false;
    F4E2M1X2 = "float4_e2m1fn_x2", 1, false;
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_22_unique_names_that_round_trip() {
        assert_eq!(Dtype::ALL.len(), 22);
        let mut names: Vec<_> = Dtype::ALL.iter().map(|d| d.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 22);
        for d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>().unwrap(), *d);
        }
    }

    #[test]
    fn unknown_name_is_an_error() {
        let e = "float4_e2m1fn_x3".parse::<Dtype>().unwrap_err();
        assert!(e.to_string().contains("float4_e2m1fn_x3"));
        assert!("torch.float32".parse::<Dtype>().is_err());
    }
}
