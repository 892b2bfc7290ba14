//! Checks on policy files (safetensors blobs) that need no libtorch, so the coordinator, the
//! learner and the actors share them.

/// The first non-finite weight of a policy blob, named by tensor and element.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlobError {
    #[error("not a safetensors blob: {0}")]
    Format(String),
    #[error("tensor {tensor}: element {index} is {value}, expected finite weights")]
    NotFinite { tensor: String, index: usize, value: f32 },
}

/// Refuses a blob that is not safetensors, or whose F32 tensors hold a NaN or an infinity.
/// Tensors are checked in name order, so the error names the same tensor every time.
pub fn check_finite(blob: &[u8]) -> Result<(), BlobError> {
    let st = safetensors::SafeTensors::deserialize(blob).map_err(|e| BlobError::Format(e.to_string()))?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    for name in names {
        let view = st.tensor(name).map_err(|e| BlobError::Format(e.to_string()))?;
        if view.dtype() != safetensors::Dtype::F32 {
            continue;
        }
        let bad = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .enumerate()
            .find(|(_, x)| !x.is_finite());
        if let Some((index, value)) = bad {
            return Err(BlobError::NotFinite {
                tensor: name.to_string(),
                index,
                value,
            });
        }
    }
    Ok(())
}

/// A policy file's tensors as (name, raw bytes), sorted by name (a safetensors header's order is
/// not fixed): for comparing two files' weights.
pub fn tensors_by_name(blob: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BlobError> {
    let st = safetensors::SafeTensors::deserialize(blob).map_err(|e| BlobError::Format(e.to_string()))?;
    let mut out: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(values: &[(&str, Vec<f32>)]) -> Vec<u8> {
        let data: Vec<(String, Vec<u8>, usize)> = values
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(n, b, len)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn non_finite_weights_are_named() {
        assert_eq!(check_finite(&blob(&[("a.weight", vec![1.0, 2.0])])), Ok(()));
        let e = check_finite(&blob(&[
            ("a.weight", vec![1.0, 2.0]),
            ("b.bias", vec![0.0, f32::NAN, 1.0]),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor b.bias: element 1 is NaN, expected finite weights"
        );
        let e = check_finite(&blob(&[("z", vec![f32::INFINITY])])).unwrap_err();
        assert!(e.to_string().contains("tensor z: element 0 is inf"));
        assert!(matches!(check_finite(b"garbage"), Err(BlobError::Format(_))));
    }
}
