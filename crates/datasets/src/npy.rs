//! NPY reader (NumPy's `.npy`, format versions 1.0, 2.0 and 3.0), written here: the format is small.
//!
//! Layout: magic `\x93NUMPY`, major, minor, header length (u16 LE for v1, u32 LE for v2/v3), then a Python dict
//! literal `{'descr': '<f4', 'fortran_order': False, 'shape': (N, ...), }`, then the raw array.
//!
//! Accepted:
//! - dtypes `f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1`, little (`<`, `|`, `=`) or big (`>`) endian; structured and other
//!   dtypes are errors. Features are converted to f32 as is (u8 pixels are NOT rescaled); NaNs are missing values.
//! - C order only: `fortran_order: True` is an error.
//! - features shape `(N, d1, d2, ...)` → `row_shape = [d1, d2, ...]`; a 1-D `(N,)` array gives `row_shape = [1]`.
//! - labels: an integer (or bool) dtype, shape `(N,)` or `(N, 1)`, every value in `0..=u32::MAX`.
//! - The data must be exactly `prod(shape) × itemsize` bytes (truncation or trailing bytes are errors), and the
//!   file at most [`crate::MAX_INPUT_BYTES`].

use std::path::Path;

use crate::error::{DatasetError, Result, io_err};
use crate::table::{Table, check_file_size, check_table_size};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Header dicts longer than this are refused (NumPy writes < 200 bytes; this bounds the parser's work).
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F,
    I,
    U,
    B,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Dtype {
    kind: Kind,
    size: usize,
    big_endian: bool,
}

/// A parsed `.npy`: dtype, shape and the data bytes (borrowed).
struct Npy<'a> {
    dtype: Dtype,
    descr: String,
    shape: Vec<u64>,
    data: &'a [u8],
    data_offset: u64,
}

fn err(path: &Path, offset: u64, problem: impl Into<String>) -> DatasetError {
    DatasetError::Npy { path: path.into(), offset, problem: problem.into() }
}

pub(crate) fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<Npy<'a>> {
    if !is_npy(bytes) {
        let head: Vec<String> = bytes.iter().take(6).map(|b| format!("{b:02x}")).collect();
        return Err(err(path, 0, format!("bad magic [{}]: expected \\x93NUMPY (not an .npy file?)", head.join(" "))));
    }
    if bytes.len() < 10 {
        return Err(err(path, 6, "file ends inside the preamble"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err(path, 8, "file ends inside the preamble"));
            }
            (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12usize)
        }
        _ => {
            return Err(err(
                path,
                6,
                format!("format version {major}.{minor} is not supported: expected 1.x, 2.x or 3.x"),
            ));
        }
    };
    if hlen > MAX_HEADER_BYTES {
        return Err(err(path, 8, format!("header length {hlen} is over the {MAX_HEADER_BYTES}-byte limit")));
    }
    if bytes.len() < hstart + hlen {
        return Err(err(
            path,
            hstart as u64,
            format!("file ends inside the header: header is {hlen} bytes, {} present", bytes.len() - hstart),
        ));
    }
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen])
        .map_err(|e| err(path, hstart as u64 + e.valid_up_to() as u64, "header is not UTF-8 text"))?;
    let dict =
        parse_dict(header).map_err(|p| err(path, hstart as u64, format!("bad header {:?}: {p}", header.trim_end())))?;
    let get = |k: &str| dict.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let hdr_err = |p: String| err(path, hstart as u64, p);
    let descr = match get("descr") {
        Some(Value::Str(s)) => s.clone(),
        Some(_) => {
            return Err(hdr_err("'descr' is not a simple dtype string (structured dtypes are not supported)".into()));
        }
        None => return Err(hdr_err("header has no 'descr' key".into())),
    };
    match get("fortran_order") {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(hdr_err(
                "fortran_order is True: only C-order arrays are supported (save with np.ascontiguousarray)".into(),
            ));
        }
        Some(_) => return Err(hdr_err("'fortran_order' is not True/False".into())),
        None => return Err(hdr_err("header has no 'fortran_order' key".into())),
    }
    let shape = match get("shape") {
        Some(Value::Tuple(s)) => s.clone(),
        Some(_) => return Err(hdr_err("'shape' is not a tuple of integers".into())),
        None => return Err(hdr_err("header has no 'shape' key".into())),
    };
    let dtype = parse_descr(&descr).map_err(hdr_err)?;
    let data_offset = (hstart + hlen) as u64;
    let data = &bytes[hstart + hlen..];
    let expected: u128 = shape.iter().map(|&d| d as u128).product::<u128>() * dtype.size as u128;
    if expected != data.len() as u128 {
        let what = if (data.len() as u128) < expected { "file truncated" } else { "trailing bytes" };
        return Err(err(
            path,
            data_offset,
            format!("data is {} bytes, expected {expected} for shape {shape:?} of {descr} ({what})", data.len()),
        ));
    }
    Ok(Npy { dtype, descr, shape, data, data_offset })
}

fn parse_descr(d: &str) -> Result<Dtype, String> {
    let unsupported = || format!("dtype {d:?} is not supported: expected one of f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1");
    let mut chars = d.chars();
    let big_endian = match chars.next() {
        Some('<' | '|' | '=') => false,
        Some('>') => true,
        _ => return Err(unsupported()),
    };
    let kind = match chars.next() {
        Some('f') => Kind::F,
        Some('i') => Kind::I,
        Some('u') => Kind::U,
        Some('b') => Kind::B,
        _ => return Err(unsupported()),
    };
    let size: usize = chars.as_str().parse().map_err(|_| unsupported())?;
    let ok = match kind {
        Kind::F => matches!(size, 4 | 8),
        Kind::I | Kind::U => matches!(size, 1 | 2 | 4 | 8),
        Kind::B => size == 1,
    };
    if !ok {
        return Err(unsupported());
    }
    Ok(Dtype { kind, size, big_endian })
}

/// The `N` bytes of element `i`, in little-endian order.
#[inline]
fn elem_bytes<const N: usize>(data: &[u8], i: usize, be: bool) -> [u8; N] {
    let mut b: [u8; N] = data[i * N..(i + 1) * N].try_into().unwrap();
    if be {
        b.reverse();
    }
    b
}

fn to_f32(npy: &Npy) -> Vec<f32> {
    let (d, be) = (npy.dtype, npy.dtype.big_endian);
    let n = npy.data.len() / d.size;
    let data = npy.data;
    (0..n)
        .map(|i| match (d.kind, d.size) {
            (Kind::F, 4) => f32::from_le_bytes(elem_bytes(data, i, be)),
            (Kind::F, 8) => f64::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::I, 1) => data[i] as i8 as f32,
            (Kind::I, 2) => i16::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::I, 4) => i32::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::I, 8) => i64::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::U | Kind::B, 1) => data[i] as f32,
            (Kind::U, 2) => u16::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::U, 4) => u32::from_le_bytes(elem_bytes(data, i, be)) as f32,
            (Kind::U, 8) => u64::from_le_bytes(elem_bytes(data, i, be)) as f32,
            _ => unreachable!("parse_descr admits only the sizes above"),
        })
        .collect()
}

fn to_labels(path: &Path, npy: &Npy) -> Result<Vec<u32>> {
    let (d, be) = (npy.dtype, npy.dtype.big_endian);
    if d.kind == Kind::F {
        return Err(err(path, 0, format!("labels have dtype {}: expected an integer dtype", npy.descr)));
    }
    let n = npy.data.len() / d.size;
    let data = npy.data;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let v: i128 = match (d.kind, d.size) {
            (Kind::I, 1) => data[i] as i8 as i128,
            (Kind::I, 2) => i16::from_le_bytes(elem_bytes(data, i, be)) as i128,
            (Kind::I, 4) => i32::from_le_bytes(elem_bytes(data, i, be)) as i128,
            (Kind::I, 8) => i64::from_le_bytes(elem_bytes(data, i, be)) as i128,
            (Kind::U | Kind::B, 1) => data[i] as i128,
            (Kind::U, 2) => u16::from_le_bytes(elem_bytes(data, i, be)) as i128,
            (Kind::U, 4) => u32::from_le_bytes(elem_bytes(data, i, be)) as i128,
            (Kind::U, 8) => u64::from_le_bytes(elem_bytes(data, i, be)) as i128,
            _ => unreachable!("parse_descr admits only the sizes above"),
        };
        let v = u32::try_from(v).map_err(|_| {
            err(
                path,
                npy.data_offset + (i * d.size) as u64,
                format!("label {v} at index {i} is outside 0..={}", u32::MAX),
            )
        })?;
        out.push(v);
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    check_file_size(path)?;
    std::fs::read(path).map_err(io_err(path))
}

/// Reads a features `.npy` and a labels `.npy` into a table.
pub fn read_npy(features: &Path, labels: &Path) -> Result<Table> {
    let fbytes = read_file(features)?;
    let f = parse(features, &fbytes)?;
    if f.shape.is_empty() {
        return Err(err(features, 0, "features are a 0-d scalar: expected shape (N, ...)"));
    }
    let rows = f.shape[0];
    let row_shape: Vec<u64> = if f.shape.len() == 1 { vec![1] } else { f.shape[1..].to_vec() };
    if row_shape.contains(&0) {
        return Err(err(features, 0, format!("shape {:?} has an empty row", f.shape)));
    }
    check_table_size(features, f.shape.iter().product())?;

    let lbytes = read_file(labels)?;
    let l = parse(labels, &lbytes)?;
    let n_labels = match l.shape.as_slice() {
        [n] | [n, 1] => *n,
        s => return Err(err(labels, 0, format!("labels have shape {s:?}: expected (N,) or (N, 1)"))),
    };
    if n_labels != rows {
        return Err(DatasetError::LabelCount {
            features: features.into(),
            labels_file: labels.into(),
            rows,
            labels: n_labels,
        });
    }
    let label_vec = to_labels(labels, &l)?;
    let mut table = Table { features: to_f32(&f), labels: label_vec, row_shape, missing: 0, format: "npy" };
    table.missing = table.canonicalize_nans();
    Ok(table)
}

// ---- the header dict: a tiny parser for the Python literal subset NumPy writes.

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    Other,
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(x) => Err(format!("expected {:?} at character {}, found {:?}", c as char, self.i, x as char)),
            None => Err(format!("expected {:?}, found the end", c as char)),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or("expected a string, found the end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a quoted string at character {}", self.i));
        }
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            return Err("unterminated string".into());
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut dims = Vec::new();
                loop {
                    match self.peek() {
                        Some(b')') => {
                            self.i += 1;
                            return Ok(Value::Tuple(dims));
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let start = self.i;
                            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                                self.i += 1;
                            }
                            let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                            // NumPy may write Python 2 longs as `3L`.
                            if self.s.get(self.i) == Some(&b'L') {
                                self.i += 1;
                            }
                            dims.push(t.parse().map_err(|_| format!("shape dim {t} does not fit in u64"))?);
                            if self.peek() == Some(b',') {
                                self.i += 1;
                            }
                        }
                        _ => {
                            return Err(format!(
                                "bad shape tuple at character {}: expected a non-negative integer or ')'",
                                self.i
                            ));
                        }
                    }
                }
            }
            Some(b'[' | b'{') => {
                // A list (structured dtype) or nested dict: skip it balanced, report as Other.
                let mut depth = 0i32;
                while self.i < self.s.len() {
                    match self.s[self.i] {
                        b'[' | b'{' | b'(' => depth += 1,
                        b']' | b'}' | b')' => depth -= 1,
                        _ => {}
                    }
                    self.i += 1;
                    if depth == 0 {
                        return Ok(Value::Other);
                    }
                }
                Err("unbalanced brackets".into())
            }
            _ => {
                let rest = &self.s[self.i..];
                for (word, v) in [(&b"True"[..], Value::Bool(true)), (&b"False"[..], Value::Bool(false))] {
                    if rest.starts_with(word) {
                        self.i += word.len();
                        return Ok(v);
                    }
                }
                Err(format!("unexpected value at character {}", self.i))
            }
        }
    }
}

fn parse_dict(s: &str) -> Result<Vec<(String, Value)>, String> {
    let mut p = P { s: s.as_bytes(), i: 0 };
    p.eat(b'{')?;
    let mut out = Vec::new();
    loop {
        if p.peek() == Some(b'}') {
            break;
        }
        let k = p.string()?;
        p.eat(b':')?;
        let v = p.value()?;
        out.push((k, v));
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at character {}", p.i)),
        }
    }
    Ok(out)
}

/// Builds the bytes of a v1.0 `.npy` (for tests and tools): `descr` e.g. `"<f4"`, `data` already encoded.
pub fn encode_npy(descr: &str, fortran_order: bool, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let fo = if fortran_order { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape_s}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&[1, 0]);
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_dict() {
        let d = parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n").unwrap();
        assert_eq!(d[0], ("descr".into(), Value::Str("<f4".into())));
        assert_eq!(d[1], ("fortran_order".into(), Value::Bool(false)));
        assert_eq!(d[2], ("shape".into(), Value::Tuple(vec![3, 4])));
        assert_eq!(parse_dict("{'shape': (5,)}").unwrap()[0].1, Value::Tuple(vec![5]));
        assert_eq!(parse_dict("{'shape': ()}").unwrap()[0].1, Value::Tuple(vec![]));
        assert!(parse_dict("{'descr' '<f4'}").is_err());
        assert!(parse_dict("{'shape': (3, -1)}").is_err());
        assert_eq!(parse_dict("{'descr': [('a', '<f4')]}").unwrap()[0].1, Value::Other);
    }

    #[test]
    fn dtypes_convert() {
        let p = Path::new("t.npy");
        let data: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let b = encode_npy(">f8", false, &[2], &data);
        assert_eq!(to_f32(&parse(p, &b).unwrap()), vec![1.5, -2.0]);
        let data: Vec<u8> = [-1i64, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b = encode_npy("<i8", false, &[2], &data);
        let e = to_labels(p, &parse(p, &b).unwrap()).unwrap_err().to_string();
        assert!(e.contains("label -1 at index 0"), "{e}");
        assert!(parse_descr("<c8").is_err());
        assert!(parse_descr("<f2").is_err());
    }
}
