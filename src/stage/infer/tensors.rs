//! Arrow columns <-> ONNX tensors for the `infer` stage.
//!
//! Inputs become [`Matrix`]es: a row-major `[rows, width]` buffer. For the columns the
//! pipeline produces itself (token lists of uniform length, fixed-size float vectors) the
//! matrix *is* the column's Arrow value buffer, sliced, not copied; ONNX Runtime then
//! reads it through a borrowed tensor. Stacked scalar columns (tabular features) are
//! interleaved into a new buffer, since Arrow stores them column by column.
//!
//! Outputs come back as flat buffers and become `FixedSizeList` columns (vectors) or
//! plain columns (one value per row).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::cast;
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Int64Type};

/// The element types sluice feeds to and reads from models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    I64,
    F32,
}

impl Elem {
    pub(crate) fn from_dtype(dtype: &str) -> Option<Elem> {
        match dtype {
            "int64" => Some(Elem::I64),
            "float32" => Some(Elem::F32),
            _ => None,
        }
    }

    pub(crate) fn data_type(self) -> DataType {
        match self {
            Elem::I64 => DataType::Int64,
            Elem::F32 => DataType::Float32,
        }
    }

    pub fn from_ort(ty: ort::value::TensorElementType) -> Option<Elem> {
        match ty {
            ort::value::TensorElementType::Int64 => Some(Elem::I64),
            ort::value::TensorElementType::Float32 => Some(Elem::F32),
            _ => None,
        }
    }
}

/// A `[rows, width]` row-major input.
#[derive(Debug, Clone)]
pub enum Matrix {
    I64 {
        data: ScalarBuffer<i64>,
        width: usize,
    },
    F32 {
        data: ScalarBuffer<f32>,
        width: usize,
    },
}

impl Matrix {
    pub fn width(&self) -> usize {
        match self {
            Matrix::I64 { width, .. } | Matrix::F32 { width, .. } => *width,
        }
    }

    /// Number of non-zero values in each row (the real length of a padded mask).
    pub fn nonzero_per_row(&self) -> Vec<usize> {
        let width = self.width().max(1);
        match self {
            Matrix::I64 { data, .. } => data
                .chunks(width)
                .map(|r| r.iter().filter(|v| **v != 0).count())
                .collect(),
            Matrix::F32 { data, .. } => data
                .chunks(width)
                .map(|r| r.iter().filter(|v| **v != 0.0).count())
                .collect(),
        }
    }
}

/// Model input columns that cannot become a tensor.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error(
        "list rows have different lengths; pad them to one length per batch (the tokenize stage does)"
    )]
    Ragged,
    #[error("expected a fixed-size list")]
    NotFixedSize,
    #[error("the column cannot be cast to the model's element type")]
    Cast(#[from] arrow::error::ArrowError),
}

/// Builds one model input from its columns, or says why the rows cannot be fed.
/// `null_rows` receives rows with a null input (they are rejected by the stage).
pub fn input_matrix(
    columns: &[&ArrayRef],
    want: Elem,
    null_rows: &mut Vec<usize>,
) -> Result<Matrix, TensorError> {
    let rows = columns.first().map_or(0, |c| c.len());
    for column in columns {
        null_rows.extend((0..rows).filter(|&r| column.is_null(r)));
    }
    if let [column] = columns {
        match column.data_type() {
            DataType::List(_) | DataType::LargeList(_) => return list_matrix(column, want),
            DataType::FixedSizeList(_, _) => return fixed_list_matrix(column, want),
            _ => {}
        }
    }
    stacked_matrix(columns, want)
}

fn list_matrix(column: &ArrayRef, want: Elem) -> Result<Matrix, TensorError> {
    let target = DataType::List(Arc::new(Field::new_list_field(want.data_type(), true)));
    let list = cast(column, &target)?;
    let list = list.as_list::<i32>();
    let offsets = list.value_offsets();
    let width = match offsets {
        [first, second, ..] => (second - first) as usize,
        _ => 0,
    };
    if offsets.windows(2).any(|w| (w[1] - w[0]) as usize != width) {
        return Err(TensorError::Ragged);
    }
    let start = offsets.first().copied().unwrap_or(0) as usize;
    Ok(slice_values(
        list.values(),
        start,
        list.len() * width,
        width,
        want,
    ))
}

/// A `[rows, width]` matrix over `values[start..start + len]`: the list's own buffer.
fn slice_values(values: &ArrayRef, start: usize, len: usize, width: usize, want: Elem) -> Matrix {
    match want {
        Elem::I64 => Matrix::I64 {
            data: values
                .as_primitive::<Int64Type>()
                .values()
                .slice(start, len),
            width,
        },
        Elem::F32 => Matrix::F32 {
            data: values
                .as_primitive::<Float32Type>()
                .values()
                .slice(start, len),
            width,
        },
    }
}

fn fixed_list_matrix(column: &ArrayRef, want: Elem) -> Result<Matrix, TensorError> {
    let DataType::FixedSizeList(_, width) = column.data_type() else {
        return Err(TensorError::NotFixedSize);
    };
    let width = *width as usize;
    let target = DataType::FixedSizeList(
        Arc::new(Field::new_list_field(want.data_type(), true)),
        width as i32,
    );
    let list = cast(column, &target)?;
    let list = list.as_fixed_size_list();
    let start = if list.is_empty() {
        0
    } else {
        list.value_offset_at(0)
    };
    Ok(slice_values(
        list.values(),
        start,
        list.len() * width,
        width,
        want,
    ))
}

fn stacked_matrix(columns: &[&ArrayRef], want: Elem) -> Result<Matrix, TensorError> {
    let width = columns.len();
    Ok(match want {
        Elem::F32 => Matrix::F32 {
            data: interleave::<Float32Type>(columns)?.into(),
            width,
        },
        Elem::I64 => Matrix::I64 {
            data: interleave::<Int64Type>(columns)?.into(),
            width,
        },
    })
}

/// Columns cast to `T`, interleaved row by row (Arrow stores them column by column).
fn interleave<T: ArrowPrimitiveType>(columns: &[&ArrayRef]) -> Result<Vec<T::Native>, TensorError> {
    let rows = columns.first().map_or(0, |c| c.len());
    let cast: Vec<ArrayRef> = columns
        .iter()
        .map(|c| cast(c, &T::DATA_TYPE))
        .collect::<Result<_, _>>()?;
    let values: Vec<&[T::Native]> = cast
        .iter()
        .map(|c| c.as_primitive::<T>().values().as_ref())
        .collect();
    let mut data = Vec::with_capacity(rows * columns.len());
    for row in 0..rows {
        data.extend(values.iter().map(|c| c[row]));
    }
    Ok(data)
}

/// One model output's values for the rows of one request, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputBuffer {
    I64(Vec<i64>),
    F32(Vec<f32>),
}

impl OutputBuffer {
    pub fn zeros(elem: Elem, len: usize) -> Self {
        match elem {
            Elem::I64 => OutputBuffer::I64(vec![0; len]),
            Elem::F32 => OutputBuffer::F32(vec![0.0; len]),
        }
    }
}

/// How one model output maps to a column.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub output: String,
    pub column: String,
    pub elem: Elem,
    /// Values per row (product of the dimensions after the batch one).
    pub width: usize,
    /// A vector column (`FixedSizeList`) rather than one value per row.
    pub vector: bool,
}

impl OutputSpec {
    pub(crate) fn field(&self) -> Field {
        let data_type = if self.vector {
            DataType::FixedSizeList(
                Arc::new(Field::new_list_field(self.elem.data_type(), false)),
                self.width as i32,
            )
        } else {
            self.elem.data_type()
        };
        Field::new(&self.column, data_type, false)
    }

    pub fn array(&self, buffer: OutputBuffer) -> Result<ArrayRef, arrow::error::ArrowError> {
        let values: ArrayRef = match buffer {
            OutputBuffer::I64(v) => Arc::new(Int64Array::from(v)),
            OutputBuffer::F32(v) => Arc::new(Float32Array::from(v)),
        };
        if !self.vector {
            return Ok(values);
        }
        let item = Arc::new(Field::new_list_field(self.elem.data_type(), false));
        Ok(Arc::new(FixedSizeListArray::try_new(
            item,
            self.width as i32,
            values,
            None,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ListArray;
    use arrow::buffer::OffsetBuffer;

    #[test]
    fn uniform_token_lists_are_fed_from_their_own_buffer() {
        let values = Int64Array::from((0..12).collect::<Vec<i64>>());
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, false)),
            OffsetBuffer::from_lengths([4, 4, 4]),
            Arc::new(values.clone()),
            None,
        );
        let column: ArrayRef = Arc::new(list.slice(1, 2));
        let matrix = input_matrix(&[&column], Elem::I64, &mut Vec::new()).unwrap();
        let Matrix::I64 { data, width } = matrix else {
            panic!("int64 expected")
        };
        assert_eq!((width, &data[..]), (4, &[4_i64, 5, 6, 7, 8, 9, 10, 11][..]));
        // Same allocation as the Arrow column: no copy was made.
        assert_eq!(data.as_ptr(), values.values()[4..].as_ptr());
    }

    #[test]
    fn ragged_lists_are_refused() {
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Int64, false)),
            OffsetBuffer::from_lengths([2, 3]),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
            None,
        );
        let column: ArrayRef = Arc::new(list);
        assert!(input_matrix(&[&column], Elem::I64, &mut Vec::new()).is_err());
    }

    #[test]
    fn scalar_columns_are_stacked_row_major_and_nulls_reported() {
        let a: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![Some(1.0), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![3, 4]));
        let mut nulls = Vec::new();
        let Matrix::F32 { data, width } = input_matrix(&[&a, &b], Elem::F32, &mut nulls).unwrap()
        else {
            panic!("float expected")
        };
        assert_eq!(
            (width, &data[..], nulls),
            (2, &[1.0_f32, 3.0, 0.0, 4.0][..], vec![1])
        );
    }

    #[test]
    fn vector_outputs_become_fixed_size_lists() {
        let spec = OutputSpec {
            output: "p".into(),
            column: "probabilities".into(),
            elem: Elem::F32,
            width: 2,
            vector: true,
        };
        let array = spec
            .array(OutputBuffer::F32(vec![0.25, 0.75, 0.5, 0.5]))
            .unwrap();
        assert_eq!(array.data_type(), spec.field().data_type());
        assert_eq!(array.len(), 2);
    }
}
