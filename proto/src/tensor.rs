use bytes::Bytes;

use crate::v1::{DType, Tensor};

/// A problem with a received tensor. The message names the field and what was expected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("{field}: missing tensor")]
    Missing { field: &'static str },
    #[error("{field}: expected dtype {expected}, got {got}")]
    DType {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("{field}: expected shape {expected}, got {got:?}")]
    Shape {
        field: &'static str,
        expected: String,
        got: Vec<u64>,
    },
    #[error("{field}: shape {shape:?} needs {expected} bytes, got {got}")]
    Length {
        field: &'static str,
        shape: Vec<u64>,
        expected: u64,
        got: usize,
    },
    #[error("{field}: element {index} is {value}, expected a finite number")]
    NotFinite {
        field: &'static str,
        index: usize,
        value: f32,
    },
    #[error("{field}: element {index} is {value}, expected {expected}")]
    OutOfRange {
        field: &'static str,
        index: usize,
        value: i64,
        expected: String,
    },
}

/// Rust element types that travel as tensors (little-endian, as every supported target is).
pub trait ElementType: bytemuck::Pod {
    const DTYPE: DType;
    const SIZE: usize = std::mem::size_of::<Self>();
}

#[cfg(target_endian = "big")]
compile_error!("the wire format is little-endian and Troupe copies tensors as native bytes");

impl ElementType for f32 {
    const DTYPE: DType = DType::DtypeF32;
}

impl ElementType for i64 {
    const DTYPE: DType = DType::DtypeI64;
}

impl ElementType for u8 {
    const DTYPE: DType = DType::DtypeU8;
}

/// Bytes per element of a dtype (0 for unspecified).
pub fn dtype_size(d: DType) -> usize {
    match d {
        DType::DtypeUnspecified => 0,
        DType::DtypeF32 => 4,
        DType::DtypeI64 => 8,
        DType::DtypeU8 => 1,
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::DtypeUnspecified => "unspecified",
        DType::DtypeF32 => "f32",
        DType::DtypeI64 => "i64",
        DType::DtypeU8 => "u8",
    }
}

impl Tensor {
    /// Encodes `values` (row-major) with the given shape.
    ///
    /// # Panics
    /// If `values.len()` is not the product of `shape`: that is a bug in the sender.
    pub fn from_slice<T: ElementType>(shape: &[usize], values: &[T]) -> Tensor {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            values.len(),
            "tensor shape {shape:?} does not match {} values",
            values.len()
        );
        Tensor::from_bytes(T::DTYPE, shape, Bytes::copy_from_slice(bytemuck::cast_slice(values)))
    }

    /// Wraps bytes already laid out as `dtype` elements (no copy).
    pub fn from_bytes(dtype: DType, shape: &[usize], data: Bytes) -> Tensor {
        Tensor {
            dtype: dtype as i32,
            shape: shape.iter().map(|&d| d as u64).collect(),
            data,
        }
    }
}

/// A received tensor whose dtype and byte length have been checked against its shape.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    pub field: &'static str,
    pub shape: Vec<usize>,
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Checks `tensor` holds elements of type `T` and that its bytes match its shape.
    pub fn new<T: ElementType>(field: &'static str, tensor: Option<&'a Tensor>) -> Result<Self, TensorError> {
        Self::with_dtype(field, tensor, T::DTYPE)
    }

    /// Checks `tensor` holds elements of `want` and that its bytes match its shape.
    pub fn with_dtype(field: &'static str, tensor: Option<&'a Tensor>, want: DType) -> Result<Self, TensorError> {
        let t = tensor.ok_or(TensorError::Missing { field })?;
        let dtype = DType::try_from(t.dtype).unwrap_or(DType::DtypeUnspecified);
        if dtype != want || want == DType::DtypeUnspecified {
            let got = match DType::try_from(t.dtype) {
                Ok(d) => dtype_name(d).to_string(),
                Err(_) => format!("unknown dtype {}", t.dtype),
            };
            return Err(TensorError::DType {
                field,
                expected: dtype_name(want),
                got,
            });
        }
        let elements = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype_size(want) as u64));
        match elements {
            Some(bytes) if bytes == t.data.len() as u64 => {}
            other => {
                return Err(TensorError::Length {
                    field,
                    shape: t.shape.clone(),
                    expected: other.unwrap_or(u64::MAX),
                    got: t.data.len(),
                })
            }
        }
        Ok(TensorView {
            field,
            shape: t.shape.iter().map(|&d| d as usize).collect(),
            data: &t.data,
        })
    }

    /// Checks the shape against `expected`, where `None` matches any size.
    pub fn expect_shape(&self, expected: &[Option<usize>]) -> Result<(), TensorError> {
        let ok = self.shape.len() == expected.len()
            && self.shape.iter().zip(expected).all(|(&d, e)| e.is_none_or(|e| e == d));
        if ok {
            return Ok(());
        }
        let want: Vec<String> = expected
            .iter()
            .map(|e| e.map_or_else(|| "_".to_string(), |d| d.to_string()))
            .collect();
        Err(TensorError::Shape {
            field: self.field,
            expected: format!("[{}]", want.join(", ")),
            got: self.shape.iter().map(|&d| d as u64).collect(),
        })
    }

    /// The raw little-endian bytes (dtype and length already checked).
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Decodes the elements with one copy. The dtype was checked in [`TensorView::new`].
    pub fn to_vec<T: ElementType>(&self) -> Vec<T> {
        bytemuck::pod_collect_to_vec(self.data)
    }

    /// Rejects NaN and infinities among f32 elements, without copying.
    pub fn check_finite_f32(&self) -> Result<(), TensorError> {
        let bad = self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .enumerate()
            .find(|(_, x)| !x.is_finite());
        match bad {
            Some((index, value)) => Err(TensorError::NotFinite {
                field: self.field,
                index,
                value,
            }),
            None => Ok(()),
        }
    }

    /// Decodes f32 elements and rejects NaN and infinities.
    pub fn to_finite_f32(&self) -> Result<Vec<f32>, TensorError> {
        self.check_finite_f32()?;
        Ok(self.to_vec())
    }

    /// Checks i64 elements: element i of each row of the last dimension lies in
    /// `0..bounds[i % bounds.len()]`, without copying.
    pub fn check_i64_below(&self, bounds: &[i64]) -> Result<(), TensorError> {
        let bad = self
            .data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .enumerate()
            .find(|&(i, x)| x < 0 || x >= bounds[i % bounds.len()]);
        match bad {
            Some((index, value)) => Err(TensorError::OutOfRange {
                field: self.field,
                index,
                value,
                expected: format!("a value in [0, {})", bounds[index % bounds.len()]),
            }),
            None => Ok(()),
        }
    }

    /// Decodes integer elements and checks each lies in `lo..hi`.
    pub fn to_i64_in(&self, lo: i64, hi: i64) -> Result<Vec<i64>, TensorError> {
        let v: Vec<i64> = self.to_vec();
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, &x)| x < lo || x >= hi) {
            return Err(TensorError::OutOfRange {
                field: self.field,
                index,
                value,
                expected: format!("a value in [{lo}, {hi})"),
            });
        }
        Ok(v)
    }

    /// Checks u8 elements are 0 or 1, without copying.
    pub fn check_flags(&self) -> Result<(), TensorError> {
        if let Some((index, &value)) = self.data.iter().enumerate().find(|(_, &x)| x > 1) {
            return Err(TensorError::OutOfRange {
                field: self.field,
                index,
                value: value as i64,
                expected: "0 or 1".to_string(),
            });
        }
        Ok(())
    }

    /// Decodes 0/1 flags.
    pub fn to_flags(&self) -> Result<Vec<bool>, TensorError> {
        self.check_flags()?;
        Ok(self.data.iter().map(|&x| x == 1).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trips_as_little_endian_bytes() {
        let values = [1.5f32, -2.0, 0.0, f32::MAX, f32::MIN_POSITIVE, 3.25];
        let t = Tensor::from_slice(&[2, 3], &values);
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data.len(), 24);
        assert_eq!(&t.data[..4], &1.5f32.to_le_bytes());
        let v = TensorView::new::<f32>("x", Some(&t)).unwrap();
        assert_eq!(v.shape, vec![2, 3]);
        assert_eq!(v.to_finite_f32().unwrap(), values.to_vec());
    }

    #[test]
    fn i64_and_u8_round_trip() {
        let t = Tensor::from_slice(&[4], &[0i64, 1, -7, i64::MAX]);
        let v = TensorView::new::<i64>("a", Some(&t)).unwrap();
        assert_eq!(v.to_vec::<i64>(), vec![0, 1, -7, i64::MAX]);
        let f = Tensor::from_slice(&[3], &[0u8, 1, 1]);
        let v = TensorView::new::<u8>("f", Some(&f)).unwrap();
        assert_eq!(v.to_flags().unwrap(), vec![false, true, true]);
    }

    #[test]
    fn wrong_dtype_names_the_field() {
        let t = Tensor::from_slice(&[2], &[1u8, 0]);
        let err = TensorView::new::<f32>("rewards", Some(&t)).unwrap_err();
        assert_eq!(err.to_string(), "rewards: expected dtype f32, got u8");
        let mut t = t;
        t.dtype = 42;
        let err = TensorView::new::<u8>("rewards", Some(&t)).unwrap_err();
        assert_eq!(err.to_string(), "rewards: expected dtype u8, got unknown dtype 42");
    }

    #[test]
    fn byte_length_must_match_shape() {
        let mut t = Tensor::from_slice(&[2, 2], &[1.0f32, 2.0, 3.0, 4.0]);
        t.shape = vec![2, 3];
        let err = TensorView::new::<f32>("observations", Some(&t)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("observations: shape [2, 3] needs 24 bytes, got 16"),
            "{err}"
        );
        // A shape whose element count overflows is rejected, not wrapped.
        t.shape = vec![u64::MAX, 4];
        assert!(matches!(
            TensorView::new::<f32>("observations", Some(&t)),
            Err(TensorError::Length { .. })
        ));
    }

    #[test]
    fn missing_shape_nan_and_range_errors_name_the_field() {
        assert_eq!(
            TensorView::new::<f32>("actions", None).unwrap_err().to_string(),
            "actions: missing tensor"
        );
        let t = Tensor::from_slice(&[2, 2], &[1.0f32, 2.0, f32::NAN, 4.0]);
        let v = TensorView::new::<f32>("rewards", Some(&t)).unwrap();
        assert_eq!(
            v.expect_shape(&[Some(3), None]).unwrap_err().to_string(),
            "rewards: expected shape [3, _], got [2, 2]"
        );
        v.expect_shape(&[Some(2), None]).unwrap();
        assert_eq!(
            v.to_finite_f32().unwrap_err().to_string(),
            "rewards: element 2 is NaN, expected a finite number"
        );
        let a = Tensor::from_slice(&[3], &[0i64, 2, 1]);
        let v = TensorView::new::<i64>("actions", Some(&a)).unwrap();
        assert_eq!(
            v.to_i64_in(0, 2).unwrap_err().to_string(),
            "actions: element 1 is 2, expected a value in [0, 2)"
        );
        let f = Tensor::from_slice(&[2], &[0u8, 3]);
        let v = TensorView::new::<u8>("terminated", Some(&f)).unwrap();
        assert_eq!(
            v.to_flags().unwrap_err().to_string(),
            "terminated: element 1 is 3, expected 0 or 1"
        );
    }
}
